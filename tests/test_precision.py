"""Weights' precision: the per-machine choice and its line, int8 / bf16 applied by the one loader, LoRA kept fp32."""

from __future__ import annotations

import pytest

from schemabuild.errors import ConfigError
from schemabuild.precision import choose_precision, choose_wait_policy, cpu_flags, runnable_others, weight_dtypes

pytestmark = pytest.mark.usefixtures("one_thread")

AVX2 = {"sse4_2", "avx", "avx2", "fma"}
SAPPHIRE = AVX2 | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
TEXTS = ["billy play some Daft Punk", "weather forecast for Tokyo", "thanks billy you're the best"]


def test_auto_picks_per_machine_and_says_why_in_one_line():
    fp32 = choose_precision("auto", "cpu", flags=AVX2, engine="x86")
    assert fp32.name == "fp32" and fp32.line == "precision: fp32 (auto) - this CPU has avx2, no bf16"
    bf16 = choose_precision("auto", "cpu", flags=SAPPHIRE, engine="x86")
    assert bf16.name == "bf16" and bf16.line == "precision: bf16 (auto) - this CPU has avx512f, avx512_bf16, amx_bf16"
    int8 = choose_precision("int8", "cpu", flags=AVX2, engine="x86")  # offered, never auto: it changes answers
    assert int8.name == "int8" and int8.engine == "x86"
    assert int8.line.startswith("precision: int8 (dynamic, x86 engine; forced) - this CPU has avx2, no bf16; warning:")
    assert choose_precision(None, "cuda").name == "bf16"  # cuda maps to bf16 by default
    assert choose_precision("auto", "cuda:0").line == "precision: bf16 (cuda default) on cuda:0"
    assert choose_precision("fp32", "cuda").name == "fp32"
    assert all("\n" not in c.line for c in (fp32, int8, bf16))


def test_refusals_and_the_forced_bf16_warning():
    with pytest.raises(ConfigError, match=r"^--precision fp16: expected one of auto, fp32, bf16, int8$"):
        choose_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="^--precision int8: CPU only"):
        choose_precision("int8", "cuda")
    with pytest.raises(ConfigError, match="^--precision int8: this torch build has no quantized engine"):
        choose_precision("int8", "cpu", flags=AVX2, engine=None)
    forced = choose_precision("bf16", "cpu", flags=AVX2, engine="x86")
    assert forced.name == "bf16" and "warning: this CPU has avx2, no bf16" in forced.line
    assert "warning" not in choose_precision("bf16", "cpu", flags=SAPPHIRE, engine="x86").line


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def test_training_threads_spin_only_on_idle_cores_and_a_users_setting_wins(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3 4\nprocs_running 3\nprocs_blocked 0\n")
    assert runnable_others(samples=3, gap=0, stat=stat) == 2  # this process's own thread is not "other"
    assert runnable_others(stat=tmp_path / "missing") is None
    idle, busy, unknown, yours = {}, {}, {}, {"OMP_WAIT_POLICY": "passive"}
    assert choose_wait_policy(idle, others=0, torch_loaded=False).startswith("OMP_WAIT_POLICY=ACTIVE (0 other")
    assert choose_wait_policy(busy, others=2, torch_loaded=False).startswith("OMP_WAIT_POLICY=PASSIVE (2 other")
    assert choose_wait_policy(unknown, others=None, torch_loaded=False).startswith("OMP_WAIT_POLICY=PASSIVE (no load")
    assert (idle, busy, unknown) == ({"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"},
                                      {"OMP_WAIT_POLICY": "PASSIVE"})
    assert choose_wait_policy(yours, others=0, torch_loaded=False) == "OMP_WAIT_POLICY=passive (yours)"
    late = {}
    assert "torch was loaded first" in choose_wait_policy(late, others=0, torch_loaded=True) and late == {}


def test_int8_quantizes_the_linears_keeps_the_head_and_stays_close(tiny_model_dir, tool_picker):
    import torch

    from schemabuild.models import load_model
    from schemabuild.predictor import Predictor

    fp32, tok, contract = load_model(tool_picker, tiny_model_dir, "cpu")
    int8, _, _ = load_model(tool_picker, tiny_model_dir, "cpu", precision="int8")
    counts = weight_dtypes(int8)
    n_linear = sum(type(m) is torch.nn.Linear for m in fp32.modules())
    assert counts["qint8"] == n_linear - 1  # every linear but the output head
    assert type(int8.lm_head) is torch.nn.Linear and int8.lm_head.weight.dtype == torch.float32
    ids = tok("billy play some Daft Punk")["input_ids"]
    a, b = logits(fp32, ids), logits(int8, ids)
    assert not torch.equal(a, b)  # really quantized
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    pred = Predictor(tool_picker, int8, tok, contract, device="cpu")
    out = pred.generate_raw([pred.request(t, max_tokens=24) for t in TEXTS])
    solo = [pred.generate_raw([pred.request(t, max_tokens=24)])[0] for t in TEXTS]
    assert [r.text for r in out] == [r.text for r in solo]  # batched == one by one under int8 too


def test_bf16_and_fp32_are_read_back_from_the_weights(tiny_model_dir, tool_picker):
    from schemabuild.models import load_model

    bf16, _, _ = load_model(tool_picker, tiny_model_dir, "cpu", precision="bf16")
    assert set(weight_dtypes(bf16)) == {"bfloat16"}
    fp32, _, _ = load_model(tool_picker, tiny_model_dir, "cpu", precision="fp32")
    assert set(weight_dtypes(fp32)) == {"float32"}


@pytest.fixture(scope="module")
def two_adapters(tiny_model_dir, tool_picker, tmp_path_factory):
    """Two random LoRA adapters on the tiny base, saved with their contract (as training saves them)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from schemabuild.contract import build_contract, save_contract

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        cfg = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), cfg)
        path = tmp_path_factory.mktemp(f"lora{seed}") / "model"
        model.save_pretrained(path)
        tok.save_pretrained(path)
        save_contract(build_contract(tool_picker, tok, base_model=str(tiny_model_dir), adapter=True), path)
        out.append(path)
    return out


def test_int8_under_several_adapters_keeps_lora_fp32_and_per_row_adapters(two_adapters, tiny_model_dir, tool_picker):
    import torch

    from schemabuild.inference.decoder import Decoder
    from schemabuild.models import load_adapters, load_model
    from schemabuild.predictor import Predictor

    shared = load_adapters(tiny_model_dir, [("a", two_adapters[0]), ("b", two_adapters[1])], "cpu", precision="int8")
    lora = [m for n, m in shared.named_modules() if type(m) is torch.nn.Linear and ".lora_" in n]
    assert lora and all(m.weight.dtype == torch.float32 for m in lora)  # the adapters stay fp32
    assert weight_dtypes(shared)["qint8"] > 0  # the base linears are int8
    _, tok, contract = load_model(tool_picker, two_adapters[0], "cpu")
    pred = Predictor(tool_picker, load_model(tool_picker, tiny_model_dir, "cpu")[0], tok, contract, device="cpu")
    dec = Decoder(shared, tok, contract["stop_ids"])

    def request(adapter):
        req = pred.request(TEXTS[0], max_tokens=16)
        req.adapter = adapter
        return req

    alone = [dec.generate([request(name)])[0].text for name in ("a", "b")]
    assert alone[0] != alone[1]  # each row's own adapter is applied
    assert [r.text for r in dec.generate([request("b"), request("a")])] == [alone[1], alone[0]]
    # unmerged int8 (LoRA fp32 on int8 base) tracks the fp32 adapter closely
    fp32 = load_adapters(tiny_model_dir, [("a", two_adapters[0])], "cpu")
    ids = tok(TEXTS[0])["input_ids"]
    shared.set_adapter("a")
    a, b = logits(fp32, ids), logits(shared, ids)
    assert (a - b).abs().max() < 0.1 * a.abs().max()


def test_precision_flag_is_checked_where_it_is_given():
    from schemabuild.evaluate import EvalConfig
    from schemabuild.serve.config import ServeConfig

    assert ServeConfig().precision == "auto" and EvalConfig().precision == "auto"
    with pytest.raises(ConfigError, match="^--precision int4: expected one of"):
        ServeConfig(precision="int4")
    with pytest.raises(ConfigError, match="^--precision int4: expected one of"):
        EvalConfig(precision="int4")


def test_served_models_take_the_precision_and_announce_it(tiny_model_dir, tool_picker, capsys):
    from schemabuild.serve.config import ServeConfig
    from schemabuild.serve.served import load_models

    [served] = load_models([tool_picker], ServeConfig(precision="int8", device="cpu"), model_dirs=[tiny_model_dir])
    assert capsys.readouterr().out.startswith("precision: int8 (dynamic, ")
    assert weight_dtypes(served.decoder.model).get("qint8", 0) > 0
    [served] = load_models([tool_picker], ServeConfig(precision="fp32", device="cpu"), model_dirs=[tiny_model_dir])
    assert "qint8" not in weight_dtypes(served.decoder.model)


def test_predict_cli_refuses_an_unknown_precision():
    from click.testing import CliRunner

    from schemabuild.cli import main

    done = CliRunner().invoke(main, ["predict", "tool_picker", "hi", "--precision", "fp16"])
    assert done.exit_code == 2 and "'fp16' is not one of 'auto', 'fp32', 'bf16', 'int8'" in done.output
