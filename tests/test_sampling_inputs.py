"""Bad input to SamplingParams / Sampler fails early with a ValueError naming the value;
the `r1ci generate` command; the sampler on a device mesh."""
import jax
import numpy as np
import pytest

from r1ci_jax import cli
from r1ci_jax.models.qwen2 import Qwen2Config, init_params
from r1ci_jax.sampling import Sampler, SamplingParams
from test_sampling import build_tokenizer, save_tiny_model

CONFIG = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                     num_kv_heads=2, eos_token_id=1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"), (dict(stop=["ok", ""]), "stop strings"),
    (dict(stop="```"), "list of strings"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(top_k=-1), "top_k"), (dict(stop_token_ids=[-3]), "stop_token_ids"), (dict(seed=1.5), "seed"),
])
def test_sampling_params_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_sampling_params_normalise_lists():
    sp = SamplingParams(stop=["a", "bc"], stop_token_ids=[3])
    assert sp.stop == ("a", "bc") and sp.stop_token_ids == (3,) and hash(sp)
    assert SamplingParams(temperature=0).greedy


@pytest.fixture(scope="module")
def sampler():
    return Sampler(init_params(CONFIG, jax.random.PRNGKey(0)), CONFIG, None, max_len=16)


@pytest.mark.parametrize("prompts,match", [
    ([list(range(2, 18))], "16 tokens; max_len=16"),   # longer than max_len allows
    ([[3, 4], []], "prompt 1 is empty"),
    (["text"], "no tokenizer"),
    ([[3, 64]], "outside"),
    ([], "non-empty list"),
])
def test_sampler_rejects_bad_prompts(sampler, prompts, match):
    with pytest.raises(ValueError, match=match):
        sampler.start(prompts)


def test_sampler_rejects_bad_settings_and_appends(sampler):
    with pytest.raises(ValueError, match="max_len"):
        Sampler(sampler.params, CONFIG, None, max_len=1)
    state = sampler.start([[3, 4, 5]], SamplingParams(max_new_tokens=2, temperature=0))
    with pytest.raises(ValueError, match="need a tokenizer"):
        sampler.decode(state.replace(sampling=SamplingParams(stop=["x"])))
    _, state = sampler.decode(state)
    with pytest.raises(ValueError, match="row 4"):
        sampler.continue_(state, {4: [3]})
    with pytest.raises(ValueError, match="no room"):
        sampler.continue_(state, {0: [3] * 12})


def test_generate_command(tmp_path, capsys):
    tokenizer = build_tokenizer()
    save_tiny_model(tmp_path, tokenizer)
    rc = cli.main(["generate", "--model", str(tmp_path), "--prompt", "def add(a, b):\n", "--prompt", "for i",
                   "--max-new-tokens", "5", "--max-len", "64", "--json"])
    assert rc == 0
    import json
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [len(x["token_ids"]) for x in lines] == [5, 5] or any(x["finish_reason"] == "eos" for x in lines)
    assert all(isinstance(x["text"], str) and x["finish_reason"] in ("length", "eos") for x in lines)
    assert cli.main(["generate", "--model", str(tmp_path), "--prompt", "x", "--top-p", "0"]) == 1
    assert "top_p" in capsys.readouterr().err


@pytest.mark.parametrize("kernels", ["reference", "pallas"])
def test_sampler_on_a_mesh_matches_one_device(sampler, kernels):
    """Batch over data x fsdp, kv heads over tensor; Pallas kernels run per shard (shard_map)."""
    from r1ci_jax.sharding import make_mesh
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [12]]
    sp = SamplingParams(max_new_tokens=4, temperature=0.8, top_k=10, seed=3)
    want = sampler.generate(prompts, sp)
    sharded = Sampler(sampler.params, CONFIG, None, mesh=mesh, max_len=16, kernels=kernels)
    state = sharded.start(prompts, sp)
    assert len(state.cache["k"].sharding.device_set) == 8
    got, _ = sharded.decode(state)
    for a, b in zip(got, want):
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
