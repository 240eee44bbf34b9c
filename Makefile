# The two commands a newcomer needs: `make dashboard` and `make test`. Both set up .venv first.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kdw-installed
RUNS   ?= runs
PORT   ?= 8501

.PHONY: venv test dashboard demo bench reproduce smoke lock clean

$(STAMP): pyproject.toml constraints.txt scripts/setup_venv.sh
	@scripts/setup_venv.sh

venv: $(STAMP)

test: venv
	$(BIN)/python -m pytest

dashboard: venv demo
	$(BIN)/kdw dashboard --runs-dir $(RUNS) --port $(PORT)

# The demo runs the dashboard opens on (fast: the shipped teacher and student are reused).
demo: venv
	$(BIN)/kdw demo --runs-dir $(RUNS)

bench: venv
	$(BIN)/python -m kd_engine.bench
	$(BIN)/python -m kd_engine.bench_detection
	$(BIN)/python -m kd_engine.bench_api
	$(BIN)/python -m workbench.bench
	$(BIN)/python -m kd_engine.bench_data

reproduce: venv
	$(BIN)/kdw reproduce --budget full

smoke: venv
	$(BIN)/kdw reproduce --budget smoke

lock: venv
	$(BIN)/pip freeze --exclude-editable | grep -v '^kd-workbench' > constraints.txt.new
	@{ head -2 constraints.txt; cat constraints.txt.new; } > constraints.txt.tmp && rm constraints.txt.new && mv constraints.txt.tmp constraints.txt

clean:
	rm -rf $(RUNS) .kdw_cache artifacts
