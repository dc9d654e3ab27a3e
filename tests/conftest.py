import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in its interpreter on CPU tensors; set before lengthwise (through torch._dynamo)
    # imports triton, whose own @jit helpers read the flag when they are defined
    os.environ.setdefault("TRITON_INTERPRET", "1")
import transformers

import lengthwise as lw
from lengthwise.models.load import EMBEDDED, locate_embedded

torch.set_num_threads(max(1, os.cpu_count() or 1))


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref|: the issue's bound."""
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.fixture(scope="session")
def smol_path():
    p = locate_embedded(EMBEDDED["smollm2-135m"])
    assert p is not None, "smollm2-135m is not installed: run the setup (make setup)"
    return p


@pytest.fixture(scope="session")
def minilm_path():
    p = locate_embedded(EMBEDDED["minilm-l6"])
    assert p is not None, "minilm-l6 is not installed: run the setup (make setup)"
    return p


@pytest.fixture(scope="session")
def smol():
    return lw.load("smollm2-135m", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def hf_smol(smol_path):
    m = transformers.AutoModelForCausalLM.from_pretrained(
        str(smol_path.parent), gguf_file=smol_path.name, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def tiny_hf_causal(kind: str, tmp_path, **over):
    """A random small HF causal LM saved as safetensors; returns (hf_model, folder)."""
    base = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6)
    base.update(over)
    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[kind]
    torch.manual_seed(0)
    model = model_cls(cfg_cls(**base)).eval()
    with torch.no_grad():  # HF inits biases to zero; make them count
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.5)
    folder = tmp_path / kind
    model.save_pretrained(folder, safe_serialization=True)
    model.set_attn_implementation("eager")
    return model, folder


def tiny_smol_llama(folder, smol_path, context: int = 4096):
    """A random 2-layer Llama that speaks SmolLM2's tokenizer (and its chat template), saved to folder: fast
    enough to run whole grids on CPU."""
    from lengthwise.models.load import load_tokenizer
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=context)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    load_tokenizer(smol_path).save_pretrained(folder)
    return folder
