# One command per habit. `make check` is what CI runs (.ci/run) and what the README tells new users.
VENV ?= .venv
PY := $(VENV)/bin/python
HYPOTHESIS_PROFILE ?= fast
export HYPOTHESIS_PROFILE

.DEFAULT_GOAL := help

.PHONY: help system-deps install build-dev build-prod build-profiling format lint lint-python lint-rust lint-js test-rust test test-js bench serve demo check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip

system-deps: ## Debian tools the tests drive as real clients (curl, headless Chromium), start (redis-server), the benches use (valgrind) and the JS client's checks run on (node, npm); needs root or sudo where missing
	@command -v curl >/dev/null || { apt-get update -q && apt-get install -y -q curl; }
	@test -x /usr/bin/chromium || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
	@command -v valgrind >/dev/null || { apt-get update -q && apt-get install -y -q valgrind; }
	@command -v redis-server >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; }
	@command -v node >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
	@command -v npm >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm; }

install: $(PY) ## venv + the package (Rust extension built in release mode) + test and lint tools
	$(PY) -m pip install -q -e ".[dev]"

# Firefox for the browser tests: Debian's firefox-esr, and geckodriver built from crates.io into the repo
# (no binary download: the npm and PyPI geckodriver packages fetch one). tests/support/firefox.py looks here.
GECKODRIVER_VERSION := 0.37.1
.PHONY: firefox-deps
system-deps: firefox-deps
firefox-deps: ## firefox-esr (apt) and geckodriver in .cache/geckodriver (cargo install, about 2 minutes, once)
	@test -x /usr/bin/firefox-esr || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q firefox-esr; }
	@test -x .cache/geckodriver/bin/geckodriver || cargo install -q --locked geckodriver@$(GECKODRIVER_VERSION) --root .cache/geckodriver

build-dev: $(PY) ## rebuild the extension, debug build (fast to compile)
	$(VENV)/bin/maturin develop -q

build-prod: $(PY) ## rebuild the extension, release build (benchmarks use this)
	$(VENV)/bin/maturin develop -q --release

build-profiling: $(PY) ## release build with debug symbols, for perf/callgrind
	$(VENV)/bin/maturin develop -q --profile profiling

format: ## format Rust and Python
	cargo fmt
	$(VENV)/bin/ruff format python tests benches examples
	$(VENV)/bin/ruff check --fix python tests benches examples

lint-python: ## ruff, mypy --strict, stubtest of the extension's .pyi
	$(VENV)/bin/ruff check python tests benches examples
	$(VENV)/bin/ruff format --check python tests benches examples
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest tokenwire._core --allowlist .mypy-stubtest-allowlist

lint-rust: ## rustfmt and clippy (lints live in Cargo.toml)
	cargo fmt --check
	cargo clippy -q --all-targets -- -D warnings
	cargo clippy -q --all-targets --features python -- -D warnings

# The JS client's dev tools (typescript), as js/package-lock.json pins them; reinstalled when the lock changes.
JS_DEPS := js/node_modules/.package-lock.json

$(JS_DEPS): js/package.json js/package-lock.json
	cd js && npm ci --no-audit --no-fund
	@touch $@

lint-js: $(JS_DEPS) ## tsc --checkJs over js/src/client.js, and js/test/types.ts (the docs' examples against the published types); js/types/client.d.ts current; size budget (6 KB min+gz); npm pack accepts js/
	cd js && ./node_modules/.bin/tsc -p .
	cd js && node scripts/types.mjs --check
	cd js && node scripts/size.mjs --max-gzip 6144
	cd js && npm pack --dry-run --silent >/dev/null

lint: lint-python lint-rust lint-js ## all linters

test-rust: ## Rust unit tests of the pure core (no Python needed)
	cargo test -q

test: ## pytest: the suite, plus every benchmark once as a smoke test
	$(PY) -m pytest tests benches -q

test-js: ## node --test: the JS client's decoders on the wire vectors shared with the Rust tests; the client against a real tokenwire serve (make install's venv)
	node --test js/test/*.test.js

bench: ## time the benchmarks side by side
	$(PY) -m pytest benches -q --benchmark-enable --benchmark-columns=min,mean,median,ops,rounds --benchmark-sort=mean

serve: install ## install, then run the SSE server on 127.0.0.1:8000 (in-memory hub, FakeModel)
	$(VENV)/bin/tokenwire serve

demo: install ## install, then stream, drop mid-answer, resume, verify (no server needed)
	$(VENV)/bin/tokenwire demo

check: system-deps install lint test-rust test test-js ## install everything and pass every check and test (CI runs this)

clean: ## remove build outputs and the venv
	rm -rf target $(VENV) js/node_modules python/tokenwire/*.so .pytest_cache .hypothesis .benchmarks .mypy_cache .ruff_cache
