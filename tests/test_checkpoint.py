"""HF safetensors <-> params: exact round trip, transformers loads exports, clear errors."""
import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from hf_models import hf_logits, make_hf_model, save_hf_model
from r1ci_jax.checkpoint.hf import CheckpointError, load_hf, read_hf_numpy, save_hf
from r1ci_jax.models.qwen2 import forward


def _all_tensors(path: Path) -> dict:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                assert k not in out, f"{k} in two shards"
                out[k] = st.get_tensor(k)
    return out


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    untied = make_hf_model(seed=3)
    tied = make_hf_model(seed=4, tie_word_embeddings=True, num_key_value_heads=1)
    return {
        "untied_f32": (untied, save_hf_model(untied, root / "untied_f32")),
        "tied_bf16": (tied, save_hf_model(tied, root / "tied_bf16", dtype="bfloat16")),
        "untied_sharded": (untied, save_hf_model(untied, root / "untied_sharded", max_shard_size="20KB")),
    }


@pytest.mark.parametrize("name", ["untied_f32", "tied_bf16", "untied_sharded"])
def test_round_trip_is_exact(hf_dirs, tmp_path, name):
    _, src = hf_dirs[name]
    config, params = load_hf(src)
    out = save_hf(params, config, tmp_path / "out")
    a, b = _all_tensors(src), _all_tensors(out)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)), k


def test_sharded_export_loads_in_transformers_with_equal_logits(hf_dirs, tmp_path):
    import transformers
    model, src = hf_dirs["untied_f32"]
    config, params = load_hf(src)
    out = save_hf(params, config, tmp_path / "sharded", max_shard_size=30_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokens = np.random.RandomState(0).randint(0, config.vocab_size, (2, 7))
    ref = hf_logits(model, tokens)
    np.testing.assert_allclose(hf_logits(reloaded, tokens), ref, atol=1e-5)
    ours = np.asarray(forward(params, config, jnp.asarray(tokens))[0])
    assert np.abs(ours - ref).max() < 1e-4


def test_tied_bf16_export_loads_in_transformers(hf_dirs, tmp_path):
    import torch
    import transformers
    model, src = hf_dirs["tied_bf16"]
    config, params = load_hf(src)
    assert config.param_dtype == "bfloat16" and params["embed"].dtype == jnp.bfloat16
    assert "lm_head" not in params
    out = save_hf(params, config, tmp_path / "tied")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16).eval()
    assert reloaded.config.tie_word_embeddings
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    original = _all_tensors(src)
    for name, tensor in reloaded.state_dict().items():
        if name == "lm_head.weight":
            continue
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, torch.from_numpy(original[name].view(np.uint16).astype(np.int16)).view(torch.bfloat16)), name


def test_load_with_dtype_cast(hf_dirs):
    _, src = hf_dirs["tied_bf16"]
    config, params = read_hf_numpy(src, dtype="float32")
    assert config.param_dtype == "float32" and params["layers"]["q"].dtype == np.float32


# ----------------------------------------------------------------------------- bad input

def _copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json not found"):
        load_hf(tmp_path)


def test_non_qwen2_architecture(hf_dirs, tmp_path):
    d = _copy(hf_dirs["untied_f32"][1], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: not a Qwen2 model.*LlamaForCausalLM"):
        load_hf(d)


def _rewrite(d: Path, edit) -> None:
    f = d / "model.safetensors"
    tensors = _all_tensors(d)
    edit(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def test_missing_tensor(hf_dirs, tmp_path):
    d = _copy(hf_dirs["untied_f32"][1], tmp_path / "m")
    _rewrite(d, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['model\.layers\.1\.mlp\.up_proj\.weight'\]"):
        load_hf(d)


def test_extra_tensor(hf_dirs, tmp_path):
    d = _copy(hf_dirs["untied_f32"][1], tmp_path / "m")
    _rewrite(d, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": np.zeros((2, 2), np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) \['model\.layers\.2\.mlp\.up_proj\.weight'\]"):
        load_hf(d)


def test_wrong_shape(hf_dirs, tmp_path):
    d = _copy(hf_dirs["untied_f32"][1], tmp_path / "m")
    _rewrite(d, lambda t: t.update({"model.norm.weight": np.zeros((63,), np.float32)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor model\.norm\.weight has shape \(63,\), expected \(64,\)"):
        load_hf(d)


def test_truncated_file(hf_dirs, tmp_path):
    d = _copy(hf_dirs["untied_f32"][1], tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable safetensors file"):
        load_hf(d)


def test_missing_shard(hf_dirs, tmp_path):
    d = _copy(hf_dirs["untied_sharded"][1], tmp_path / "m")
    victim = sorted(d.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"shard {victim.name} is listed but missing"):
        load_hf(d)


def test_failed_export_leaves_nothing(hf_dirs, tmp_path):
    _, src = hf_dirs["untied_f32"]
    config, params = read_hf_numpy(src)
    del params["layers"]["down"]
    with pytest.raises(CheckpointError, match="params are missing layers/down"):
        save_hf(params, config, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    # an existing export survives a failed overwrite
    good = save_hf(read_hf_numpy(src)[1], config, tmp_path / "out")
    before = _all_tensors(good)
    with pytest.raises(CheckpointError):
        save_hf(params, config, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert sorted(_all_tensors(good)) == sorted(before)


def test_cli_convert_round_trip(hf_dirs, tmp_path):
    _, src = hf_dirs["tied_bf16"]
    run = lambda *a: subprocess.run([sys.executable, "-m", "r1ci_jax.cli", "convert", *a],
                                    capture_output=True, text=True, timeout=300)
    r = run("hf-to-orbax", str(src), str(tmp_path / "orbax"))
    assert r.returncode == 0, r.stderr
    r = run("orbax-to-hf", str(tmp_path / "orbax"), str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    a, b = _all_tensors(src), _all_tensors(tmp_path / "hf")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)) for k in a)
    r = run("hf-to-orbax", str(tmp_path / "nowhere"), str(tmp_path / "x"))
    assert r.returncode == 1 and "config.json not found" in r.stderr
