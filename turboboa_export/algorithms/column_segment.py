"""GPTQ's inner loop over one segment of columns, run eagerly or replayed from a CUDA graph.

A segment is at most one lazy block and never crosses a group whose grid is still to be found, so its
per-column scales and zeros are known when it starts. Per column i of the segment:
    q = Q(W[:, i]);  e = (W[:, i] - s (q - z)) / U_ii;  W[:, i:] -= e U[i, i:] - W[:, i] P[i, i:]
(P is GPTAQ's correction, absent for plain GPTQ). On the GPU the loop is a few hundred tiny kernels whose
launch cost dominates, so it is captured once per shape as a CUDA graph and replayed: the same kernels on
the same inputs, hence the same bits as the eager loop.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .grid import dequantize, quantize

Segment = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def segment_pass(w1: torch.Tensor, u1: torch.Tensor, p1: torch.Tensor | None, s1: torch.Tensor, z1: torch.Tensor,
                 maxq: int) -> Segment:
    """Quantize the columns of ``w1`` ([..., rows, n], updated in place) in order.

    ``u1``/``p1``: the segment's [..., n, n] block of U (upper Cholesky of H^-1) and of P; ``s1``/``z1``:
    [..., rows, n] scale and zero of each column's group. Returns (codes, errors e, columns before
    quantization), each [..., rows, n]; the caller pushes errors and columns into the later segments.
    """
    codes, errors, columns = torch.empty_like(w1), torch.empty_like(w1), torch.empty_like(w1)
    for i in range(w1.shape[-1]):
        col = w1[..., i]
        columns[..., i] = col
        q = quantize(col, s1[..., i], z1[..., i], maxq)
        codes[..., i] = q
        e = (col - dequantize(q, s1[..., i], z1[..., i])) / u1[..., i, i].unsqueeze(-1)
        update = e.unsqueeze(-1) * u1[..., i, i:].unsqueeze(-2)  # e U[i, i:]
        if p1 is not None:
            update = update - col.unsqueeze(-1) * p1[..., i, i:].unsqueeze(-2)  # - W[:, i] P[i, i:]
        w1[..., i:] -= update
        errors[..., i] = e
    return codes, errors, columns


class SegmentGraphs:
    """CUDA graphs of :func:`segment_pass`, one per input signature, least recently used ones dropped beyond
    ``capacity`` (a decoder block of any method uses at most 6 signatures; 16 keeps three methods' in a benchmark)."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._graphs: OrderedDict = OrderedDict()

    def run(self, w1, u1, p1, s1, z1, maxq: int) -> Segment:
        """Same contract as :func:`segment_pass` (``w1`` updated in place), replayed from a graph."""
        inputs = (w1, u1, s1, z1) if p1 is None else (w1, u1, s1, z1, p1)
        key = (maxq, w1.device, w1.dtype) + tuple(tuple(t.shape) for t in inputs)
        if key not in self._graphs:
            self._graphs[key] = self._capture(inputs, maxq)
            if len(self._graphs) > self.capacity:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        graph, static, outputs = self._graphs[key]
        for buf, t in zip(static, inputs):
            buf.copy_(t)
        graph.replay()
        w1.copy_(static[0])
        return tuple(o.clone() for o in outputs)

    @staticmethod
    def _capture(inputs, maxq: int):
        static = [t.clone() for t in inputs]

        def body():
            w, u, s, z, *p = static
            return segment_pass(w, u, p[0] if p else None, s, z, maxq)

        side = torch.cuda.Stream(device=static[0].device)
        side.wait_stream(torch.cuda.current_stream(static[0].device))
        with torch.cuda.stream(side):
            body()  # warm-up outside the graph, as CUDA graph capture requires
        torch.cuda.current_stream(static[0].device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = body()
        return graph, static, outputs


GRAPHS = SegmentGraphs()


def run_segment(w1, u1, p1, s1, z1, maxq: int) -> Segment:
    """:func:`segment_pass`, from a CUDA graph when the tensors live on a GPU."""
    if w1.is_cuda and not torch.cuda.is_current_stream_capturing():
        return GRAPHS.run(w1, u1, p1, s1, z1, maxq)
    return segment_pass(w1, u1, p1, s1, z1, maxq)
