"""PEFT adapters against the real PEFT library (torch, transformers, peft: `make test-interop`).

Out: our export loads with `PeftModel.from_pretrained` on the transformers class a PyTorch user
would pick, with no warning, and gives our hidden states and logits on real MR sentences.
In: an adapter PEFT saves (`get_peft_model(...).save_pretrained`) initialises our model
(`read_adapter` -> `init_adapters`) and gives PEFT's outputs. Tolerance 1e-4 (float32 on both
sides; MiniLM's hidden states reach |h| ~ 6), except where noted.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES
from safetensors.numpy import load_file
from tolerance import float32_forward_tolerance

from lora_jax.adapter_io import export_adapter, init_adapters
from lora_jax.lora import LoRAConfig
from lora_jax.models import load_decoder, load_pretrained
from lora_jax.models.bert import BertEncoder
from lora_jax.models.heads import mean_pool
from lora_jax.partition import combine, label_params, split
from lora_jax.peft_adapter import HEAD_FILE, read_adapter

pytestmark = pytest.mark.interop
# Imported when an interop test runs, not at collection: `make test` collects this module too
# (then deselects it) and must not import torch.
torch = transformers = peft = None


@pytest.fixture(autouse=True, scope="module")
def _libraries():
    global torch, transformers, peft
    reason = "needs the interop extra (torch, transformers, peft): run `make test-interop`"
    torch = pytest.importorskip("torch", reason=reason)
    transformers = pytest.importorskip("transformers", reason=reason)
    peft = pytest.importorskip("peft", reason=reason)


ATOL = 1e-4


PARITY = FIXTURES / "parity"
# PEFT 0.21's PeftModel.__init__ reads `model.is_gradient_checkpointing`, which transformers 5
# deprecated: emitted for every adapter, PEFT's own included, so not about ours.
LIBRARY_DEPRECATIONS = ("`is_gradient_checkpointing` is deprecated",)


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    from lora_jax.data import assets, load_split

    try:
        assets.ensure_mr(fetch=False)
    except FileNotFoundError as e:
        pytest.skip(f"{e} (run `python -m lora_jax.data.assets`)")
    source = load_split("mr", "validation")
    return [source[i]["sentence"].decode() for i in range(12)]


def _batch(tokenizer, texts: list[str], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    ids = [e.ids for e in tokenizer.encode_batch(texts)]
    width = max(map(len, ids))
    mask = np.array([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    return np.array([i + [pad_id] * (width - len(i)) for i in ids]), mask


def _perturb(params: dict, b_std: float, head_std: float = 0.0, seed: int = 0) -> dict:
    """Non-zero B (it starts at zero), as after training; with `head_std`, a head whose logits
    are of order 1 (a fresh head's are ~0.1, too small to show a wrong head)."""
    keys = iter(jax.random.split(jax.random.key(seed), 10_000))

    def f(path, x):
        names = [p.key for p in path]
        std = b_std if names[-1] == "lora_b" else head_std if names[0] == "head" else 0.0
        return x + std * jax.random.normal(next(keys), x.shape) if std else x

    return jax.tree_util.tree_map_with_path(f, params)


def _trainable(pre, params: dict) -> dict:
    return split(params, label_params(params, trainable=pre.head_rules)).trainable


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _warnings_while(fn):
    """fn()'s result, and every warning and WARNING+ log record (peft, transformers) it emits."""
    records, loggers = _Records(), [logging.getLogger(n) for n in ("peft", "transformers", "")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn()
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    return result, [str(w.message) for w in caught] + records.messages


def _peft_load(base, folder: Path):
    """`PeftModel.from_pretrained`, asserting that it warns about nothing of ours."""
    model, messages = _warnings_while(lambda: peft.PeftModel.from_pretrained(base, str(folder)))
    assert [m for m in messages if not m.startswith(LIBRARY_DEPRECATIONS)] == []
    return model.eval()


def _minilm() -> Path:
    from lora_jax.models import minilm_folder

    return minilm_folder()


def _torch(*arrays):
    return [torch.tensor(np.asarray(a)) for a in arrays]


# ---- out: our export in PEFT -------------------------------------------------------------------


def test_minilm_mean_pooling_loads_on_bert_model(tmp_path, sentences):
    lora = LoRAConfig(rank=4, targets="qv")
    pre = load_pretrained("minilm", lora, num_labels=2)
    assert pre.pooling == "mean"
    params = _perturb(pre.params, 0.05, head_std=0.5)
    export_adapter(tmp_path, _trainable(pre, params), lora, pre)
    ids, mask = _batch(pre.tokenizer, sentences, pad_id=0)
    ours = np.asarray(BertEncoder(pre.config, lora).apply({"params": params["encoder"]}, ids, mask))
    our_logits = np.asarray(pre.module.apply({"params": params}, ids, mask))

    base = transformers.BertModel.from_pretrained(_minilm())
    model = _peft_load(base, tmp_path)
    with torch.no_grad():
        hidden = model(*_torch(ids, mask)).last_hidden_state.numpy()
        with model.disable_adapter():
            plain = model(*_torch(ids, mask)).last_hidden_state.numpy()
    assert np.abs(hidden - plain).max() > 0.5  # the adapter is applied, not silently dropped
    np.testing.assert_allclose(hidden, ours, atol=ATOL, rtol=0)
    # FEATURE_EXTRACTION: the head is ours (head.safetensors) on the mean of PEFT's states.
    head = load_file(tmp_path / HEAD_FILE)
    logits = np.asarray(mean_pool(hidden, mask)) @ head["head/out/kernel"] + head["head/out/bias"]
    assert np.abs(our_logits).max() > 0.5
    np.testing.assert_allclose(logits, our_logits, atol=ATOL, rtol=0)


def test_minilm_cls_pooling_loads_on_bert_for_sequence_classification(tmp_path, sentences):
    lora = LoRAConfig(rank=4, targets="qkvo,ffn_in,ffn_out", rank_pattern={"o": 2})
    pre = load_pretrained("minilm", lora, num_labels=2, pooling="cls")
    params = _perturb(pre.params, 0.05, head_std=0.5)
    export_adapter(tmp_path, _trainable(pre, params), lora, pre)
    ids, mask = _batch(pre.tokenizer, sentences, pad_id=0)
    ours = np.asarray(BertEncoder(pre.config, lora).apply({"params": params["encoder"]}, ids, mask))
    our_logits = np.asarray(pre.module.apply({"params": params}, ids, mask))

    base = transformers.BertForSequenceClassification.from_pretrained(_minilm(), num_labels=2)
    model = _peft_load(base, tmp_path)
    with torch.no_grad():
        out = model(*_torch(ids, mask), output_hidden_states=True)
    np.testing.assert_allclose(out.hidden_states[-1].numpy(), ours, atol=ATOL, rtol=0)
    assert np.abs(our_logits).max() > 0.5
    np.testing.assert_allclose(out.logits.numpy(), our_logits, atol=ATOL, rtol=0)


def test_roberta_loads_on_roberta_for_sequence_classification(tmp_path):
    folder = PARITY / "tiny_roberta"
    lora = LoRAConfig(rank=2, targets="qv", alpha=16, scaling="alpha_over_sqrt_r")
    pre = load_pretrained(folder, lora, num_labels=3, tokenizer=False)
    params = _perturb(pre.params, 0.3, head_std=0.5)
    export_adapter(tmp_path, _trainable(pre, params), lora, pre)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 100, (4, 10))
    mask = np.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = 1, 0  # RoBERTa's pad id; positions skip pads
    ours = np.asarray(pre.module.apply({"params": params}, ids, mask))
    base = transformers.RobertaForSequenceClassification.from_pretrained(folder, num_labels=3)
    with torch.no_grad():
        theirs = _peft_load(base, tmp_path)(*_torch(ids, mask)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=ATOL, rtol=0)


def test_gpt2_conv1d_adapters_load_with_fan_in_fan_out(tmp_path):
    folder = PARITY / "tiny_gpt2"
    lora = LoRAConfig(rank=2, targets="o,ffn_in,ffn_out")
    pre = load_decoder(folder, lora, tokenizer=False)
    params = _perturb(pre.params, 0.3)
    export_adapter(tmp_path, params, lora, pre)
    ids = np.random.default_rng(1).integers(0, 100, (2, 12))
    ours = np.asarray(pre.module.apply({"params": params}, ids))
    base = transformers.GPT2LMHeadModel.from_pretrained(folder)
    with torch.no_grad():
        theirs = _peft_load(base, tmp_path)(*_torch(ids)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=ATOL, rtol=0)


def test_smollm2_gguf_loads_on_llama_for_causal_lm(tmp_path, sentences):
    """transformers reads the GGUF itself (`gguf_file=`): log-probs and the adapter's effect are
    held to the round-off two float32 forwards of 30 layers may differ by
    (`float32_forward_tolerance`)."""
    from lora_jax.weights.gguf import smollm2_path

    try:
        path = smollm2_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    lora = LoRAConfig(rank=2, targets="all")
    pre = load_decoder("smollm2", lora)
    params = _perturb(pre.params, 0.02)
    export_adapter(tmp_path, params, lora, pre)
    try:
        base = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
    except Exception as e:  # any reason transformers cannot read it: say it, do not fail
        pytest.skip(f"transformers cannot load {path.name}: {e}")
    model = _peft_load(base, tmp_path)
    fwd = jax.jit(lambda p, ids: pre.module.apply({"params": p}, ids))
    for text in sentences[:4]:
        ids = np.asarray([pre.tokenizer.encode(text).ids])
        ours, ours_plain = np.asarray(fwd(params, ids)), np.asarray(fwd(pre.params, ids))
        with torch.no_grad():
            theirs = model(*_torch(ids)).logits.numpy()
            with model.disable_adapter():
                theirs_plain = model(*_torch(ids)).logits.numpy()
        effect = ours - ours_plain
        tol = float32_forward_tolerance(ours, pre.config.num_layers, pre.config.intermediate_size)
        assert np.abs(effect).max() > 100 * tol  # the adapter's effect stands far above round-off
        np.testing.assert_allclose(theirs - theirs_plain, effect, atol=tol, rtol=0)
        logp = jax.nn.log_softmax(jnp.asarray(ours))
        np.testing.assert_allclose(jax.nn.log_softmax(jnp.asarray(theirs)), logp, atol=tol)


def test_the_warning_check_sees_an_adapter_on_the_wrong_class(tmp_path):
    """The bug this layout fixes: `bert.`-prefixed keys on a bare BertModel match nothing, and
    PEFT only warns. `_peft_load` must catch that warning."""
    lora = LoRAConfig(rank=2, targets="q")
    pre = load_pretrained(PARITY / "tiny_roberta", lora, num_labels=2, tokenizer=False)
    export_adapter(tmp_path, _trainable(pre, pre.params), lora, pre)  # SEQ_CLS: `roberta.` keys
    base = transformers.RobertaModel.from_pretrained(PARITY / "tiny_roberta")
    with pytest.raises(AssertionError, match="Found missing adapter keys"):
        _peft_load(base, tmp_path)


# ---- in: PEFT's adapter in our model -----------------------------------------------------------


def _our_forward_from(folder: Path, pre, lora: LoRAConfig, ids, mask=None) -> np.ndarray:
    """Our model with the adapter at `folder` (through `init_adapters`, as `lora.init_from`)."""
    labels = label_params(pre.params, trainable=pre.head_rules)
    parts = split(pre.params, labels)
    params = combine(init_adapters(parts.trainable, folder, lora), parts.frozen)
    if mask is None:
        return np.asarray(pre.module.apply({"params": params}, ids))
    encoder = BertEncoder(pre.config, lora)
    return np.asarray(encoder.apply({"params": params["encoder"]}, ids, mask))


def test_peft_saved_minilm_adapter_gives_peft_outputs_in_our_model(tmp_path, sentences):
    config = peft.LoraConfig(
        task_type="FEATURE_EXTRACTION",
        r=2,
        lora_alpha=8,
        target_modules=["query", "value", "intermediate.dense"],
        rank_pattern={"value": 4},
        alpha_pattern={"query": 16},
        init_lora_weights=False,  # B random: dW != 0
    )
    torch.manual_seed(0)
    model = peft.get_peft_model(transformers.BertModel.from_pretrained(_minilm()), config)
    for name, p in model.named_parameters():  # PEFT's default B is too large for a clear check
        if "lora_B" in name:
            p.data.mul_(0.05)
    model.save_pretrained(tmp_path)
    model.eval()
    adapter = read_adapter(tmp_path)
    assert adapter.scales[(0, "q")] == 8.0 and adapter.scales[(0, "v")] == 2.0
    lora = LoRAConfig(rank=2, alpha=8, targets="q,v,ffn_in", rank_pattern={"v": 4})
    pre = load_pretrained("minilm", lora, num_labels=2)
    ids, mask = _batch(pre.tokenizer, sentences, pad_id=0)
    ours = _our_forward_from(tmp_path, pre, lora, ids, mask)
    with torch.no_grad():
        theirs = model(*_torch(ids, mask)).last_hidden_state.numpy()
        with model.disable_adapter():
            plain = model(*_torch(ids, mask)).last_hidden_state.numpy()
    assert np.abs(theirs - plain).max() > 0.5
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)


def test_peft_saved_gpt2_fused_c_attn_gives_peft_logits_in_our_model(tmp_path):
    """PEFT adapts GPT-2's fused c_attn with one A; we read it as q, k, v sharing A."""
    folder = PARITY / "tiny_gpt2"
    config = peft.LoraConfig(
        r=2,
        lora_alpha=4,
        use_rslora=True,
        target_modules=["c_attn", "mlp.c_proj"],
        fan_in_fan_out=True,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(0)
    model = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(folder), config)
    model.save_pretrained(tmp_path)
    model.eval()
    lora = LoRAConfig(rank=2, targets="qkv,ffn_out")
    pre = load_decoder(folder, lora, tokenizer=False)
    ids = np.random.default_rng(2).integers(0, 100, (2, 12))
    ours = _our_forward_from(tmp_path, pre, lora, ids)
    with torch.no_grad():
        theirs = model(*_torch(ids)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)
