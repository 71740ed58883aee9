"""Read a Hugging Face checkpoint's safetensors shards one tensor (or one shard) at a time, so exports
never load the whole model: `Checkpoint` maps tensor names to shards and serves target weights as an
`svd.WeightSource`, and `base_folder` finds the local folder of any model name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import ExportError
from ..models.load import DTYPES, resolve_model
from ..experts.svd import WeightSource

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")


def base_folder(model_name: str) -> Path:
    """The local folder holding `model_name`'s checkpoint (built-in and random: models get one written
    once; a hub id comes from the local Hugging Face cache, downloading the shards if reachable)."""
    path = Path(resolve_model(model_name))
    if path.is_dir() and ((path / INDEX).is_file() or (path / SINGLE).is_file()):
        return path
    if path.is_dir() and not any(path.glob("*.safetensors")):
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise ExportError(f"{path}: checkpoint has no safetensors shards (only pickle files, which are never "
                              "loaded here); convert it with save_pretrained(safe_serialization=True)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                                  "*.jinja", "tokenizer*"]))
    except Exception as e:  # offline, gated, missing: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"model '{model_name}': cannot get its safetensors shards ({first[:200]})") from None


class Checkpoint:
    """The tensors of a safetensors checkpoint folder (sharded with an index, or one file)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if (self.folder / INDEX).is_file():
            self.index = json.loads((self.folder / INDEX).read_text(encoding="utf-8"))
            self.weight_map: dict[str, str] = dict(self.index["weight_map"])
        elif (self.folder / SINGLE).is_file():
            self.index = None
            with safe_open(self.folder / SINGLE, "pt") as f:
                self.weight_map = {k: SINGLE for k in f.keys()}
        else:
            raise ExportError(f"{self.folder}: no {INDEX} or {SINGLE}")

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def keys_in(self, shard: str) -> list[str]:
        return [k for k, s in self.weight_map.items() if s == shard]

    def get(self, key: str) -> torch.Tensor:
        """One tensor, read from its shard (memory-mapped; only this tensor is materialised)."""
        if key not in self.weight_map:
            raise ExportError(f"{self.folder}: checkpoint has no tensor '{key}'")
        with safe_open(self.folder / self.weight_map[key], "pt") as f:
            return f.get_tensor(key)

    def shard_metadata(self, shard: str) -> dict[str, str] | None:
        with safe_open(self.folder / shard, "pt") as f:
            return f.metadata()

    def target_key(self, target: str) -> str:
        key = f"{target}.weight"
        if key not in self.weight_map:
            raise ExportError(f"{self.folder}: checkpoint has no weight '{key}' for target '{target}' "
                              "(was the expert made for another architecture?)")
        return key

    def source(self, model_name: str, dtype: str | None = None) -> WeightSource:
        """Target weights as an svd.WeightSource (cast to `dtype` first when given)."""
        cast = DTYPES[dtype] if dtype else None

        def get(target: str) -> torch.Tensor:
            W = self.get(self.target_key(target))  # (out, in)
            return W if cast is None else W.to(cast)

        return WeightSource(model_name, get)

    def shape(self, key: str) -> list[int]:
        with safe_open(self.folder / self.weight_map[key], "pt") as f:
            return list(f.get_slice(key).get_shape())

    def stored_dtype(self, key: str) -> str:
        """The dtype name (float32, bfloat16, ...) a tensor is stored in."""
        with safe_open(self.folder / self.weight_map[key], "pt") as f:
            code = f.get_slice(key).get_dtype()
        return _DTYPE_NAMES.get(code, code.lower())

    def copy_side_files(self, out_dir: Path) -> list[str]:
        """Copy config, tokenizer, generation config … (every top-level file that is not weights,
        the index or a README) into `out_dir`; returns their names."""
        copied = []
        for path in sorted(self.folder.iterdir()):
            if not path.is_file() or path.name in (INDEX, "README.md") or path.name.endswith(WEIGHT_SUFFIXES):
                continue
            shutil.copyfile(path, out_dir / path.name)
            copied.append(path.name)
        return copied


_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
