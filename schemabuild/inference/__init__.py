"""The inference core: constrained decoding over a transformers model, used by `Predictor` and the server alike.

    request.py      Request, Result, Sequence (one row of a running batch), check_request
    grammars.py     the grammar-backend protocol, the one grammar cache, the factory (`make_backend`)
    backend_xgrammar.py, backend_llguidance.py   one file per grammar engine
    lru.py          the one LRU every cache is built on
    kv.py           the running batch's KV cache, the prefix KV cache
    sampling.py     greedy / temperature / top-p per sequence
    jump.py         jump-forward: forced text → tokens, the token-boundary check
    speculate.py    prompt-lookup drafts for greedy sequences (verified by the decoder in the same pass)
    decoder.py      Decoder: step / generate / drop, group_key
    task_model.py   TaskModel: prompt or messages → Request; Result → Prediction + confidence
"""
