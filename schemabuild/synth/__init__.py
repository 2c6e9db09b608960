"""Synthesis: a teacher writes and labels inputs, the checks keep the valid ones, a run's data/ is saved.

    stage      SynthConfig, freshness, `synthesize` (setup → collect → split → save)
    collect    rounds of generate → label → check (→ judge)
    checks     parse → Pydantic → jsonschema → validators → dedup → decontamination → judge
    teachers   `make_teacher`: api (OpenAI-compatible), batch (Batch API), offline (augmentation)
    protocol   what every teacher shares (Protocol, Labelled, ledger, prompts, parsing)
    cache      the SQLite cache of teacher calls
    formats    dataset export (openai, sharegpt, alpaca)
"""

from schemabuild.synth.formats import DATASET_FORMATS, export_dataset
from schemabuild.synth.stage import (SynthConfig, data_is_fresh, data_settings, read_log_inputs, run_synth_config,
                                     synthesize)
from schemabuild.synth.teachers import make_teacher, teacher_configured

__all__ = ["DATASET_FORMATS", "SynthConfig", "data_is_fresh", "data_settings", "export_dataset", "make_teacher",
           "read_log_inputs",
           "run_synth_config", "synthesize", "teacher_configured"]
