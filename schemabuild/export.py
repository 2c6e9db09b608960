"""`schemabuild export`: dataset formats (openai, sharegpt, alpaca) and model formats (merged, vllm)."""

from __future__ import annotations


def export(task, fmt: str, run=None, out=None, runs_dir=None):
    from schemabuild.runs import resolve_run

    if fmt in ("openai", "sharegpt", "alpaca"):
        from schemabuild.synth import export_dataset

        return export_dataset(task, resolve_run(task.name, run, runs_dir, need="data"), fmt, out)
    if fmt == "merged":
        from schemabuild.train import export_merged

        return export_merged(task, resolve_run(task.name, run, runs_dir, need="model"), out)
    if fmt == "vllm":
        from schemabuild.train import export_vllm

        return export_vllm(task, resolve_run(task.name, run, runs_dir, need="model"), out)
    raise ValueError(fmt)
