# volley: every target sets itself up from a bare machine (Python 3.11 with pip, a Rust toolchain).
#   make demo   - build, then run examples/demo.py on the embedded default
#   make test   - build, stubtest of _core, cargo test and pytest with doctests (then the shared-fixture suites again against
#                 a 3-node cluster on 127.0.0.x: make test-cluster, then the wheel's smoke tests
#                 in a fresh venv: make test-wheel)
#   make wheel  - the release wheel (abi3, manylinux2014, stripped) in dist/;
#                 PROFILE=profiling keeps debug info (line tables) for profilers
#   make bench  - side-by-side benchmark against Ray, Dask, joblib, multiprocessing (own venv)
#   make lint   - cargo fmt/clippy and ruff
#   make fuzz   - a minute of each cargo-fuzz target (frames, handshake; needs nightly)

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
BUILT := $(VENV)/.volley-built
BENCH_VENV := .venv-bench
BENCH_DEPS := $(BENCH_VENV)/.deps-installed
WHEEL_TOOLS := $(VENV)/.wheel-tools-installed
PROFILE ?= release
# Not target/wheels: `pip install .` leaves its own (unaudited) wheel there.
WHEEL_DIR := dist
RUST_SRC := $(shell find crates -name '*.rs' -o -name Cargo.toml -o -path '*/static/*' -type f) Cargo.toml
PY_SRC := $(shell find python -name '*.py' -o -name '*.pyi')

export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: fuzz test-cluster test-exec all demo test test-rust test-python bench lint fmt build clean wheel \
	test-wheel build-profiling

all: build

$(VPY):
	$(PYTHON) -m venv $(VENV)

# The second install: the libraries the adapters plug into (volley.joblib, volley.dask) and
# their real users in the tests (scikit-learn, DEAP), and tqdm for progress bars.
$(DEPS): pyproject.toml | $(VPY)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet "maturin>=1.14,<2" "cloudpickle>=2.2" "pytest>=7" "pytest-timeout>=2" "pytest-xdist>=3" numpy pandas ruff pyyaml
	$(VPY) -m pip install --quiet joblib scikit-learn "dask[array,dataframe,bag]" deap tqdm "optuna>=3" cmaes fastapi websocket-client
	$(VPY) -m pip install --quiet "mypy>=1.11"
	@# The dashboard's tests: /metrics parsed as Prometheus parses it, the pages in a real
	@# browser (Debian's chromium driven by selenium; the test skips, saying so, without them).
	$(VPY) -m pip install --quiet prometheus_client selenium
	@command -v chromedriver >/dev/null || ! command -v apt-get >/dev/null \
		|| apt-get install -y -q chromium chromium-driver >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null) \
		|| echo "note: could not install chromium and chromium-driver (the dashboard's browser test)"
	@# curl speaks h2c to serve's HTTP ingress (tests/test_serve_ingress.py skips without it).
	@command -v curl >/dev/null || ! command -v apt-get >/dev/null \
		|| apt-get install -y -q curl >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q curl >/dev/null) \
		|| echo "note: could not install curl (serve's HTTP/2 test)"
	@# CPython's test_concurrent_futures for tests/peers/test_cpython_futures.py: Debian ships it
	@# apart from the interpreter (the harness skips, saying so, where it cannot be installed).
	@test -f /usr/lib/python3.11/test/test_concurrent_futures.py || ! command -v apt-get >/dev/null \
		|| apt-get install -y -q libpython3.11-testsuite >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q libpython3.11-testsuite >/dev/null) \
		|| echo "note: could not install libpython3.11-testsuite (CPython's test_concurrent_futures)"
	touch $@

# The extension is built for the stable ABI (_core.abi3.so); a per-version build left from
# before would shadow it, so it goes.
$(BUILT): $(DEPS) $(RUST_SRC) pyproject.toml
	rm -f python/volley/_core.cpython-*.so
	@# The distribution was called `volley` before it became `volley-compute`.
	@! ls -d $(VENV)/lib/python*/site-packages/volley-*.dist-info >/dev/null 2>&1 \
		|| $(VPY) -m pip uninstall --quiet --yes volley
	$(VENV)/bin/maturin develop --release --quiet
	touch $@

build: $(BUILT)

# The in-place build with debug info, for perf and other profilers (see [profile.profiling]).
build-profiling: $(DEPS)
	rm -f python/volley/_core.cpython-*.so $(BUILT)
	$(VENV)/bin/maturin develop --profile profiling --quiet

# zig links the wheel against glibc 2.17 (whatever this machine's glibc), for the manylinux2014
# tag; maturin's audit checks the result. Its build goes to target/x86_64-unknown-linux-gnu/,
# beside the `make build` one, so neither rebuilds the other. Only the tools the wheel needs
# (not the test dependencies): `make wheel` is for users too.
$(WHEEL_TOOLS): | $(VPY)
	$(VPY) -m pip install --quiet "maturin>=1.14,<2" "ziglang>=0.17,<0.18"
	touch $@

wheel: $(WHEEL_TOOLS)
	rm -rf $(WHEEL_DIR)
	$(VENV)/bin/maturin build --profile $(PROFILE) --zig --compatibility manylinux2014 \
		--quiet --out $(WHEEL_DIR)

# The wheel, installed with pytest and numpy into a fresh venv in a fresh directory outside the
# tree (so `import volley` cannot find python/volley), runs tests/smoke there.
test-wheel: wheel
	d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT \
		&& $(PYTHON) -m venv "$$d/venv" \
		&& "$$d/venv/bin/python" -m pip install --quiet $(WHEEL_DIR)/*.whl pytest pytest-timeout numpy \
		&& cp tests/smoke/*.py "$$d/" && cd "$$d" \
		&& env -u VIRTUAL_ENV PATH="$$d/venv/bin:$$PATH" VOLLEY_SMOKE_VENV="$$d/venv" \
			"$$d/venv/bin/python" -m pytest -q -p no:cacheprovider .

demo: build
	$(VPY) examples/demo.py

test-rust:
	cargo test --workspace --exclude volley-py

# Two test processes (pytest-xdist), each file's tests in one of them in order (--dist
# loadfile): most tests wait on processes and sockets, so two halve the run on two cores.
test-python: build
	@$(VPY) -c "import xdist" 2>/dev/null || $(VPY) -m pip install --quiet "pytest-xdist>=3"
	$(VPY) -m pytest -n 2 --dist loadfile tests --durations=15

test: build stubtest test-rust test-python test-cluster test-exec test-wheel

# Workers are forked from a template by default (docs/workers.md); the task and actor tests run
# again with each worker its own interpreter, the path VOLLEY_WORKER_START=exec keeps.
test-exec: build
	VOLLEY_WORKER_START=exec $(VPY) -m pytest tests/test_tasks.py tests/test_actors.py

# The end-to-end tests that use the shared 2-CPU fixtures, run again against a real cluster (a
# head with no CPUs and two 1-CPU nodes on 127.0.0.x, the test process a driver) instead of an
# embedded node. Tests whose premise is one machine are marked `one_node` and skipped there.
CLUSTER_SUITE = tests/test_tasks.py tests/test_errors.py tests/test_async.py tests/test_actors.py \
	tests/test_cancel.py tests/test_object_store.py tests/test_faults.py tests/test_logging.py \
	tests/test_map.py tests/test_futures.py tests/test_multiprocessing.py tests/test_joblib.py \
	tests/test_dask.py tests/test_deap.py tests/test_executor_compat.py tests/test_pool_sharing.py \
	tests/test_manager_proxies.py tests/test_ray_compat.py tests/test_state.py tests/test_queue.py \
	tests/test_mp_process.py tests/test_mp_manager.py tests/test_shell.py tests/test_workers_view.py \
	tests/test_tune.py tests/test_tune_restore.py tests/test_serve_over_http.py tests/test_serve_ops.py tests/test_tune_optuna_storage.py \
	tests/test_serve_metrics.py tests/test_serve_stream.py tests/test_serve_websocket.py
test-cluster: build
	VOLLEY_TEST_CLUSTER=1 $(VPY) -m pytest $(CLUSTER_SUITE)

# Needs a nightly toolchain (cargo-fuzz, libFuzzer); not part of make test.
fuzz:
	cargo install cargo-fuzz --locked
	cd fuzz && cargo +nightly fuzz run frames -- -max_total_time=60
	cd fuzz && cargo +nightly fuzz run handshake -- -max_total_time=60

lint: $(DEPS)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benchmarks examples
	$(VENV)/bin/ruff format --check python tests benchmarks examples
	$(MAKE) stubtest

# The stub of the Rust extension (python/volley/_core.pyi) against the built module: a missing or
# extra export, or a parameter that differs, fails.
.PHONY: stubtest
stubtest: build
	$(VPY) -m mypy.stubtest volley._core --allowlist python/stubtest-allowlist.txt

fmt: $(DEPS)
	cargo fmt --all
	$(VENV)/bin/ruff format python tests benchmarks examples
	$(VENV)/bin/ruff check --fix python tests benchmarks examples

$(BENCH_VENV)/bin/python:
	$(PYTHON) -m venv $(BENCH_VENV)

$(BENCH_DEPS): benchmarks/requirements.txt | $(BENCH_VENV)/bin/python
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements.txt
	touch $@

bench: $(DEPS) $(BENCH_DEPS) wheel
	@# The distribution was called `volley` before it became `volley-compute`.
	$(BENCH_VENV)/bin/python -m pip uninstall --quiet --yes volley 2>/dev/null || true
	$(BENCH_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps $(WHEEL_DIR)/*.whl
	$(BENCH_VENV)/bin/python -m pip install --quiet "cloudpickle>=2.2"
	$(BENCH_VENV)/bin/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf target $(WHEEL_DIR) $(VENV) $(BENCH_VENV) python/volley/*.so
