"""NVIDIA's aiperf against an OpenAI endpoint (our edge, the peer), offline.

aiperf needs a Hugging Face tokenizer to make its synthetic prompts and count tokens; we build
it from the GGUF file's own vocabulary with the ``tokenizers`` library (the engine's tokenizer,
inference_service/engine/tokenizer.py) and save it in the Hugging Face layout
(tokenizer.json + tokenizer_config.json): no hub. aiperf runs from its own venv
(.bench-venv-aiperf, bench/install_aiperf.sh) as a subprocess, in ``--request-rate`` mode
capped by ``--concurrency`` (its pure-concurrency mode busy-polls a core, which on 2 cores
takes one from the system under test: measured 14 CPU-seconds in 16 s against 6.4 in rate mode).

aiperf counts tokens itself, with that tokenizer: its prompt size is the user text's (the
servers also evaluate the ~30 tokens the chat template adds), and it re-tokenizes the streamed
answer, which sometimes gives 62 or 63 for the 64 tokens generated (its ITL for that request is
then up to 3% high). The servers' own counts are exact but the peer sends none while streaming.

Write the tokenizer for your own deployment's model (a packaged name or a GGUF path):

    .venv/bin/python bench/aiperf_run.py tokenizer [MODEL_OR_GGUF] OUT_DIR
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.processes import REPO, stop_process  # noqa: E402

AIPERF = REPO / ".bench-venv-aiperf" / "bin" / "aiperf"


def write_tokenizer(model_file: Path, out_dir: Path) -> Path:
    """The GGUF's tokenizer as tokenizer.json + tokenizer_config.json in ``out_dir``."""
    from inference_service.engine.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.from_gguf(model_file)
    vocab = tokenizer.vocab
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer._markup_tokenizer.save(str(out_dir / "tokenizer.json"))  # the tokenizers.Tokenizer itself

    def token(i):
        return vocab.tokens[i] if i is not None else None

    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": token(vocab.bos_token_id),
              "eos_token": token(vocab.eos_token_id), "add_bos_token": False, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": vocab.context_length or 4096}
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def profile_argv(base_url: str, model: str, tokenizer_dir: Path, artifact_dir: Path, *, concurrency: int,
                 requests: int, input_tokens: int, output_tokens: int, extra_inputs: dict) -> list[str]:
    """``aiperf profile``: streamed chat, ``concurrency`` requests in flight (a constant request
    rate well above what the server can take, capped by --concurrency), synthetic prompts of
    ``input_tokens`` tokens, ``output_tokens`` asked as max_tokens (the legacy field, which
    llama-cpp-python reads). Tokens counted by aiperf with the tokenizer, for both systems alike
    (--use-server-token-count would leave the peer, which sends no usage, without ITL)."""
    return [str(AIPERF), "profile", "--model", model, "--url", base_url, "--endpoint-type", "chat", "--streaming",
            "--tokenizer", str(tokenizer_dir), "--concurrency", str(concurrency),
            "--request-rate", str(10 * concurrency), "--request-rate-mode", "constant",
            "--request-count", str(requests), "--warmup-request-count", str(concurrency),
            "--isl", str(input_tokens), "--isl-stddev", "0", "--osl", str(output_tokens), "--osl-stddev", "0",
            "--use-legacy-max-tokens", "--extra-inputs", json.dumps(extra_inputs),
            "--random-seed", "7", "--ui", "none", "--no-server-metrics", "--no-gpu-telemetry",
            "--artifact-dir", str(artifact_dir)]


def profile(base_url: str, model: str, tokenizer_dir: Path, artifact_dir: Path, *, concurrency: int,
            requests: int = 20, input_tokens: int = 64, output_tokens: int = 64, extra_inputs: dict | None = None,
            timeout_s: float = 900.0) -> dict:
    """One aiperf run; its TTFT and ITL percentiles (ms) and output throughput (tok/s).
    Raises RuntimeError when aiperf fails or any request did."""
    artifact_dir.mkdir(parents=True, exist_ok=True)
    argv = profile_argv(base_url, model, tokenizer_dir, artifact_dir, concurrency=concurrency, requests=requests,
                        input_tokens=input_tokens, output_tokens=output_tokens, extra_inputs=extra_inputs or {})
    log = artifact_dir / "aiperf.out"
    # Its own session, so that a timeout stops its worker processes too. No HF_HUB_OFFLINE: a
    # local tokenizer directory never touches the hub, and with it set aiperf 0.13.0 looks the
    # directory up in the hub cache as a repo id and fails.
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=artifact_dir, start_new_session=True)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            stop_process(proc)
            raise RuntimeError(f"aiperf still running after {timeout_s:.0f} s; see {log}") from None
    export = artifact_dir / "profile_export_aiperf.json"
    if proc.returncode != 0 or not export.exists():
        raise RuntimeError(f"aiperf exited with {proc.returncode}; see {log}")
    doc = json.loads(export.read_text())
    completed = doc["completed_request_count"]["avg"]
    if doc["error_summary"] or doc["request_error_rate"]["avg"] or completed != requests:
        raise RuntimeError(f"aiperf: {completed:.0f} of {requests} requests completed, errors "
                           f"{doc['error_summary']}; see {log}")
    wanted = {"ttft_p50_ms": ("time_to_first_token", "p50"), "ttft_p90_ms": ("time_to_first_token", "p90"),
              "itl_p50_ms": ("inter_token_latency", "p50"), "itl_p90_ms": ("inter_token_latency", "p90"),
              "output_tps": ("output_token_throughput", "avg"), "input_tokens": ("input_sequence_length", "avg"),
              "output_tokens": ("output_sequence_length", "avg")}
    missing = [metric for metric, _ in wanted.values() if metric not in doc]
    if missing:
        raise RuntimeError(f"aiperf reported no {', '.join(missing)}; see {log}")
    return {key: doc[metric][stat] for key, (metric, stat) in wanted.items()}


def main(argv: list[str]) -> int:
    if argv[:1] != ["tokenizer"] or len(argv) not in (2, 3):
        print(__doc__)
        return 2
    from inference_service.models.registry import ModelRegistry

    source = argv[1] if len(argv) == 3 else "smollm2:135m"
    path = Path(source) if Path(source).is_file() else ModelRegistry().resolve(source).source_path
    print(write_tokenizer(path, Path(argv[-1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
