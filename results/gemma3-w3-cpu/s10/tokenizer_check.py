import torch, time, transformers
print(transformers.__version__)
from turboboa_export.models import materialize_builtin
from tbq_eval.ppl import load_for_eval, eval_windows, perplexity
materialize_builtin("gemma3-270m")
m, tok = load_for_eval("gemma3-270m", None)
ws = eval_windows(tok, "exl2-wiki", 2048)
print(ws.shape, ws[0,:12].tolist())
print(2048, perplexity(m, ws[:2], torch.device("cpu"), progress=False), flush=True)
