"""The inference core: constrained decoding over a transformers model or llama.cpp, used by `Predictor` and the server.

    request.py      Request, Result, Sequence (one row of a running batch), check_request
    grammars.py     the grammar-backend protocol, the one grammar cache, the factory (`make_backend`)
    backend_xgrammar.py, backend_llguidance.py   one file per grammar engine
    lru.py          the one LRU every cache is built on
    forward.py      Forward: the protocol of the engine's forward pass the decoder runs on
    kv.py           the running batch's KV cache, the prefix KV cache, TorchForward (a transformers model)
    llamacpp.py     LlamaCppForward: llama.cpp's forward pass over a GGUF, one KV sequence slot per row
    sampling.py     greedy / temperature / top-p per sequence
    jump.py         jump-forward: forced text → tokens, the token-boundary check
    speculate.py    prompt-lookup drafts for greedy sequences (verified by the decoder in the same pass)
    decoder.py      Decoder: step / generate / drop, group_key
    task_model.py   TaskModel: prompt or messages → Request; Result → Prediction + confidence
"""
