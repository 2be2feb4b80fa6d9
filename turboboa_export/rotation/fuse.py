"""Offline rotation of a model's weights (QuaRot, algorithm.md section 6), exact in real arithmetic:

- RMSNorm scales fused into the following linears (q/k/v, gate/up, lm_head), norm weights set to one;
- a seeded random Hadamard Q on the residual stream: E <- E Q; W <- W Q for q/k/v/gate/up/lm_head (inputs);
  W <- Q^T W, b <- b Q for o/down (outputs), since RMSNorm(x Q) = RMSNorm(x) Q for unit norm weights;
- an exact Hadamard H_d per head on v's output rows (W_v <- H_d^T W_v per kv head) and o's input columns
  (W_o <- W_o (I kron H_d));
- down's weight W_down <- W_down H_i, undone online by x <- x H_i on its input (``online.py``); H_i is the full
  H_n or block-diagonal (``online_block``, hadamard.py).
Tied embeddings are untied (lm_head carries the final norm's scale). Done in float64, stored in the model dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch import ArchSpec, attention_shape
from ..errors import TbqError
from .hadamard import apply_online_rotation, check_online_rotation, factor, hadamard_matrix, random_hadamard

ROTATABLE = ("llama", "mistral", "qwen2", "qwen3")  # RMSNorm x * w before each sub-block, nothing in the residual


def check_rotatable(config, spec: ArchSpec, online_block: int | None = None) -> None:
    """A clear error for families or sizes the rotation does not cover (``online_block``: B of block:B, which
    needs no Hadamard of the intermediate size's order, only B dividing it)."""
    if spec.family not in ROTATABLE:
        raise TbqError(f"--rotate hadamard supports {', '.join(ROTATABLE)}, not {spec.family} (its norms sit in the "
                       "residual stream or scale by 1 + w); quantize without --rotate")
    for what, n in (("hidden size", config.hidden_size), ("head dim", attention_shape(config).head_dim),
                    *((("intermediate size", config.intermediate_size),) if online_block is None else ())):
        try:
            factor(n)
        except TbqError as e:
            raise TbqError(f"cannot rotate: {what} {n}: {e}; for the intermediate size, --online-rotation block:B "
                           "needs no full Hadamard") from None
    check_online_rotation(config.intermediate_size, online_block)  # block:B only needs B to divide it


def _set(module: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    module.weight.data = weight.to(module.weight.dtype).contiguous()
    if bias is not None:
        module.bias.data = bias.to(module.bias.dtype)


def _fuse_norm_then_rotate(norm: nn.Module, linears: list[nn.Linear], q: torch.Tensor) -> None:
    """W <- W diag(w_norm) Q for each linear reading the norm's output; norm weight <- 1."""
    scale = norm.weight.data.double()
    for m in linears:
        _set(m, (m.weight.data.double() * scale[None, :]) @ q)
    norm.weight.data.fill_(1.0)


def _rotate_output(m: nn.Linear, q: torch.Tensor) -> None:
    """y <- y Q: W <- Q^T W, b <- b Q."""
    _set(m, q.T @ m.weight.data.double(), m.bias.data.double() @ q if m.bias is not None else None)


class Rotation:
    """One model's rotation, applied part by part as its parts are loaded (a streamed run holds one block at a
    time): :meth:`untie` and :meth:`embedding` first, :meth:`block` for each decoder block, :meth:`head` last.
    ``config``/``spec``: the model's; ``seed``: the random Hadamard's; ``online_block``: None for the full H_n on
    down_proj's input, B for block-diagonal. Raises TbqError for families or sizes it does not cover."""

    def __init__(self, config, spec: ArchSpec, seed: int, online_block: int | None = None):
        check_rotatable(config, spec, online_block)
        self.spec, self.online_block = spec, online_block
        self.shape = attention_shape(config)
        self.q = random_hadamard(config.hidden_size, seed)  # float64 [hidden, hidden]
        self.h_d = hadamard_matrix(self.shape.head_dim)

    def untie(self, model: nn.Module) -> None:
        """Give lm_head its own weight (a tied one is rotated differently from the embedding)."""
        embed, head = model.get_submodule(self.spec.embed), model.get_submodule(self.spec.lm_head)
        if getattr(model.config, "tie_word_embeddings", False) or head.weight is embed.weight:
            head.weight = nn.Parameter(embed.weight.data.clone())
            model.config.tie_word_embeddings = False

    @torch.no_grad()
    def embedding(self, model: nn.Module) -> None:
        """E <- E Q (after :meth:`untie`)."""
        embed = model.get_submodule(self.spec.embed)
        embed.weight.data = (embed.weight.data.double() @ self.q).to(embed.weight.dtype)

    @torch.no_grad()
    def block(self, block: nn.Module) -> None:
        """Fuse the block's norms, rotate its residual-stream sides by Q, v/o per head by H_d, down_proj by H_i."""
        spec, shape, q, h_d = self.spec, self.shape, self.q, self.h_d
        lin = {role: block.get_submodule(path) for role, path in spec.linears().items()}
        _fuse_norm_then_rotate(block.get_submodule(spec.input_norm), [lin["q"], lin["k"], lin["v"]], q)
        _fuse_norm_then_rotate(block.get_submodule(spec.post_attn_norm), [lin["gate"], lin["up"]], q)
        _rotate_output(lin["o"], q)
        _rotate_output(lin["down"], q)
        v = lin["v"].weight.data.double().reshape(shape.kv_heads, shape.head_dim, -1)
        v_bias = lin["v"].bias.data.double().reshape(shape.kv_heads, shape.head_dim) @ h_d if lin["v"].bias is not None else None
        _set(lin["v"], (h_d.T @ v).reshape(lin["v"].weight.shape), None if v_bias is None else v_bias.reshape(-1))
        o = lin["o"].weight.data.double().reshape(-1, shape.heads, shape.head_dim)
        _set(lin["o"], (o @ h_d).reshape(lin["o"].weight.shape))
        _set(lin["down"], apply_online_rotation(lin["down"].weight.data.double(), self.online_block))  # W_down H_i

    @torch.no_grad()
    def head(self, model: nn.Module) -> None:
        """Fuse the final norm into lm_head, rotated by Q."""
        _fuse_norm_then_rotate(model.get_submodule(self.spec.final_norm), [model.get_submodule(self.spec.lm_head)],
                               self.q)


def rotate_model(model: nn.Module, spec: ArchSpec, seed: int, online_block: int | None = None) -> None:
    """Rotate ``model`` in place (see the module docstring); its function is unchanged once ``online`` transforms
    are installed with the same ``online_block`` (None: the full H_n on down_proj's input; B: block-diagonal)."""
    rotation = Rotation(model.config, spec, seed, online_block)
    rotation.untie(model)
    rotation.embedding(model)
    for block in model.get_submodule(spec.layers):
        rotation.block(block)
    rotation.head(model)
