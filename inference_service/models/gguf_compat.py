"""Rewrite modern GGUF files into what ctransformers' 2023 llama.cpp loader accepts.

That loader needs three things current converters no longer write:

1. ``tokenizer.ggml.scores`` (one float32 per token; zeros are fine);
2. ``output.weight`` (models with tied embeddings omit it; a copy of
   ``token_embd.weight`` is the same matrix);
3. a vocabulary entry that is literally ``"\\n"``: the loader tokenizes a newline at
   load time and segfaults if that yields nothing. Byte-level BPE vocabularies spell
   the newline ``Ċ``; renaming that entry is enough.

The rewrite touches only the loader's view of the file. Tokenization happens in Python
from the *original* vocabulary (see ``engine.tokenizer``), so the renamed entry never
reaches a user.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

SCORES_KEY = "tokenizer.ggml.scores"
TOKENS_KEY = "tokenizer.ggml.tokens"
BYTE_LEVEL_NEWLINE = "Ċ"


@dataclass(frozen=True)
class CompatFixes:
    add_scores: bool
    add_output_weight: bool
    rename_newline_token: int | None  # token id renamed to "\n", if any

    @property
    def needed(self) -> bool:
        return self.add_scores or self.add_output_weight or self.rename_newline_token is not None


def _string_array(reader: GGUFReader, key: str) -> list[str]:
    field = reader.fields.get(key)
    return list(field.contents()) if field is not None else []


def inspect_fixes(reader: GGUFReader) -> CompatFixes:
    """Says which of the three fixes a file needs."""
    tensor_names = {t.name for t in reader.tensors}
    tokens = _string_array(reader, TOKENS_KEY)
    rename = None
    if tokens and "\n" not in tokens and BYTE_LEVEL_NEWLINE in tokens:
        rename = tokens.index(BYTE_LEVEL_NEWLINE)
    return CompatFixes(
        add_scores=bool(tokens) and SCORES_KEY not in reader.fields,
        add_output_weight="output.weight" not in tensor_names and "token_embd.weight" in tensor_names,
        rename_newline_token=rename,
    )


def needs_rewrite(path: Path) -> bool:
    return inspect_fixes(GGUFReader(path)).needed


def rewrite_for_ctransformers(source: Path, destination: Path) -> CompatFixes:
    """Writes a loadable copy of ``source`` to ``destination`` (atomically) and says what changed."""
    reader = GGUFReader(source)
    fixes = inspect_fixes(reader)
    _write_copy(reader, destination, fixes, {})
    return fixes


def copy_with_metadata(source: Path, destination: Path, strings: dict[str, str]) -> None:
    """Writes a copy of ``source`` with the string metadata ``strings`` set (a chat template,
    say), atomically; tensors and every other key as they are."""
    _write_copy(GGUFReader(source), destination, CompatFixes(False, False, None), strings)


def _write_copy(reader: GGUFReader, destination: Path, fixes: CompatFixes, strings: dict[str, str]) -> None:
    arch_field = reader.fields["general.architecture"]
    arch = arch_field.contents()

    tmp = destination.with_name(destination.name + f".tmp{os.getpid()}")
    writer = GGUFWriter(tmp, arch)
    try:
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name == "general.architecture":
                continue  # the writer writes these itself
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == GGUFValueType.ARRAY else None
            value = field.contents()
            if field.name in strings:
                value = strings[field.name]
            if field.name == TOKENS_KEY and fixes.rename_newline_token is not None:
                value = list(value)
                value[fixes.rename_newline_token] = "\n"
            writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
        if fixes.add_scores:
            n_tokens = len(reader.fields[TOKENS_KEY].data)
            writer.add_key_value(
                SCORES_KEY, [0.0] * n_tokens, GGUFValueType.ARRAY, sub_type=GGUFValueType.FLOAT32
            )
        for name, text in strings.items():
            if name not in reader.fields:
                writer.add_key_value(name, text, GGUFValueType.STRING)

        tensors = list(reader.tensors)
        if fixes.add_output_weight:
            tensors.append(next(t for t in reader.tensors if t.name == "token_embd.weight"))
        names = [t.name for t in reader.tensors] + (["output.weight"] if fixes.add_output_weight else [])
        datas = [np.asarray(t.data) for t in tensors]
        for name, tensor, data in zip(names, tensors, datas):
            writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, tensor.tensor_type)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data in datas:
            writer.write_tensor_data(data)
        writer.close()
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            tmp.unlink()
