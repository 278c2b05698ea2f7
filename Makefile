# Two commands from a fresh clone:  `make run`  and  `make test`.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BUF_VERSION := 1.75.0
BUF    := .tools/node_modules/.bin/buf
GRPC_ADDRESS ?= 127.0.0.1:50051
EDGE_BIND    ?= 127.0.0.1:8000

.PHONY: run test setup model test-models browser proto docs-settings lint-proto bench bench-slots bench-contention bench-threads bench-embeddings-beside bench-engines bench-paired bench-structured bench-cluster bench-chat profile soak clean help

help:
	@echo "make run     set up, pull the default model, start the gRPC service ($(GRPC_ADDRESS)) and the edge ($(EDGE_BIND))"
	@echo "make test    set up and run every test (proto lint, stub drift, unit, gRPC, end to end, a headless Chromium)"
	@echo "make bench   benchmark in-process / gRPC / edge / llama-cpp-python (our harness + NVIDIA aiperf), table + bench/results/bench.png"
	@echo "make soak    16 hostile clients for 2 minutes: failures, RSS/Pss_Anon against the memory bound, idle CPU after"
	@echo "make bench-contention   decode tok/s quiet vs one busy process beside: ours adaptive/fixed, llama-server -t 2/-t 1"
	@echo "make bench-threads      1 vs 2 compute threads beside a neighbour taking 0-1 core (the adaptive policy's margins)"
	@echo "make bench-embeddings-beside   single-stream decode alone / after an embeddings request / while another client embeds"
	@echo "make bench-paired       ours (edge, gRPC) vs llama-server -np 4 in pairs seconds apart: one stream, four, cold chat TTFT, CPU per token"
	@echo "make bench-engines      our ctransformers and llama.cpp engines (via the edge) beside llama-server -np 2/4: tok/s, TTFT, CPU per token, edit and JSON workloads; table + bench/results/engines.png"
	@echo "make bench-structured   decode tok/s with and without grammar constraints (JSON schema, tool calls), both engines"
	@echo "make bench-cluster      next-turn chat TTFT through one edge over 3 replicas: prefix-affinity vs least-loaded vs round-robin"
	@echo "make bench-chat         2/4/8 conversations taking turns and at once: next-turn TTFT and cached share, both engines vs llama-server"
	@echo "make profile            py-spy flame graph of the service streaming (1 then 4 streams): bench/results/profile-after.svg"
	@echo "make proto   regenerate the Python stubs from protos/"
	@echo "make docs-settings   regenerate docs/settings.md (every flag and variable) from the argument parsers"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[engine,edge,dev]'
	@echo "llama.cpp engine: the first install compiles llama.cpp (about 6 minutes on 2 cores; cached after)"
	set -o pipefail; $(PY) -m pip install --progress-bar on -e '.[llamacpp]' | { grep -v '^Requirement already satisfied' || true; }
	touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

setup: $(VENV)/.installed

model: setup
	$(PY) -m inference_service pull

# The second real model the tests use (gemma3:270m, 246 MB: only the llama.cpp engine runs it).
test-models: setup
	$(PY) -m inference_service pull gemma3:270m

run: setup model
	@echo "gRPC service on $(GRPC_ADDRESS), OpenAI edge on http://$(EDGE_BIND) -- Ctrl-C stops both"
	@$(PY) -m inference_service serve --address $(GRPC_ADDRESS) & service=$$!; \
	INFERENCE_TARGET=$(GRPC_ADDRESS) EDGE_BIND=$(EDGE_BIND) $(PY) -m rest_edge & edge=$$!; \
	trap 'kill -TERM $$service $$edge 2>/dev/null; wait' INT TERM; \
	wait -n; kill -TERM $$service $$edge 2>/dev/null; wait

# Debian's Chromium for the browser test (tests/e2e/test_browser.py drives it over its DevTools
# pipe: no driver, no browser download); nothing to do when one is on PATH or CHROMIUM is set.
browser:
	@if [ -z "$$CHROMIUM" ] && ! command -v chromium >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser test"; \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

# Regenerates inference_service/v1/*_pb2*.py from the proto (the stubs are committed).
proto: setup
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. \
		protos/inference_service/v1/inference.proto

# docs/settings.md is generated from the argument parsers; tests/test_docs.py fails on drift.
docs-settings: setup
	$(PY) tools/settings_table.py > docs/settings.md

# buf breaking (buf.yaml: FILE) compares the protos with the local branch main of this clone
# (a fresh clone, shallow or not, has it). A checkout without a local main (a CI job on a
# detached pull-request head) passes BUF_AGAINST='.git#branch=origin/main'.
BUF_AGAINST ?= .git\#branch=main
lint-proto: $(BUF)
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(BUF) breaking --against '$(BUF_AGAINST)'

test: setup model test-models browser lint-proto
	$(PY) -m pytest

bench: setup model
	bash bench/install_peer.sh
	bash bench/install_aiperf.sh
	$(PY) bench/run.py

# py-spy flame graph of the service while it streams: bench/results/profile-after.{svg,txt}.
profile: setup model
	$(PY) -m pip install --quiet py-spy
	$(PY) bench/profile.py --label after

bench-slots: setup model
	$(PY) bench/slots.py

# Builds llama.cpp's llama-server once (bench/.build, ~6-8 min on 2 cores), then one table.
bench-contention: setup model
	bash bench/install_peer.sh llama-server
	$(PY) bench/contention.py

bench-threads: setup model
	$(PY) bench/thread_crossover.py

# A chat stream's decode alone, after an embeddings request and while another client embeds (~3 min).
bench-embeddings-beside: setup model
	$(PY) bench/embeddings_beside.py

# Ours (edge, gRPC) and llama-server up at once, each workload run on every system seconds apart (~15 min).
bench-paired: setup model
	bash bench/install_peer.sh llama-server
	$(PY) bench/paired.py

# Our two engines through the edge beside llama-server -np 2/4 (built as above), ~6 min.
bench-engines: setup model
	bash bench/install_peer.sh llama-server
	$(PY) bench/engines.py

# Decode tok/s unconstrained vs a 20-field JSON schema vs a forced tool call; grammar compile ms.
bench-structured: setup model
	$(PY) bench/structured.py

# 3 replicas (--slots 1 --threads 1) behind one edge, restarted for each routing policy; 12 chats x 4 turns
# of ~1,000-token histories: next-turn TTFT p50/p95, cached share, bench/results/cluster.{json,png}.
bench-cluster: setup model
	$(PY) bench/cluster.py

# N conversations (2, 4, 8) x 4 turns over ~1,000-token histories on 4 slots, taking turns and all at
# once: our two engines (via the edge) and llama-server -np 4; table + bench/results/chat.{json,png}.
bench-chat: setup model
	bash bench/install_peer.sh llama-server
	$(PY) bench/chat.py

soak: setup model
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) .tools bench/results
