"""Training: the base a run trains on, the contract-tokenized data, the TRL/PEFT fit, and model export.

    settings   TrainConfig and the defaults measured per kind of base
    base       --base resolution (hub default → registry base → embedded tiny model); registry: fetch + convert
    data       a run's rows tokenized by the contract
    fit        `train_run`: setup → TRL SFTTrainer (+ PEFT LoRA) → save model/
    answer_loss  the loss with the output head on the answer positions only (what the trainer minimises)
    export     merged model, vLLM folder
    gguf       one GGUF file for llama.cpp (q8_0 / f16 / f32), or a GGUF + Ollama Modelfile

Under a launcher: `torchrun --nproc_per_node 2 -m schemabuild train <task> ...` (or `-m schemabuild.train`).
"""

from schemabuild.train.base import Base, build_tiny_base, check_base_arg, resolve_base
from schemabuild.train.data import encode_rows, load_split
from schemabuild.train.export import MODEL_FORMATS, export_merged, export_vllm
from schemabuild.train.gguf import GGUF_FORMATS, QUANTS, export_gguf, export_ollama, serving_gguf
from schemabuild.train.fit import is_main, last_checkpoint, make_trainer, sft_config, train_run, world_size
from schemabuild.train.settings import TrainConfig

__all__ = ["Base", "GGUF_FORMATS", "MODEL_FORMATS", "QUANTS", "TrainConfig", "build_tiny_base", "check_base_arg", "encode_rows", "export_gguf", "export_merged", "export_ollama", "export_vllm", "serving_gguf",
           "is_main", "last_checkpoint", "load_split", "make_trainer", "resolve_base", "sft_config", "train_run",
           "world_size"]
