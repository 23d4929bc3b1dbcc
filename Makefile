# volley: every target sets itself up from a bare machine (Python 3.11 with pip, a Rust toolchain).
#   make demo   - build, then run examples/demo.py on the embedded default
#   make test   - build, then cargo test and pytest (then the shared-fixture suites again against
#                 a 3-node cluster on 127.0.0.x: make test-cluster)
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
RUST_SRC := $(shell find crates -name '*.rs' -o -name Cargo.toml) Cargo.toml
PY_SRC := $(shell find python -name '*.py' -o -name '*.pyi')

export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: fuzz test-cluster all demo test test-rust test-python bench lint fmt build clean

all: build

$(VPY):
	$(PYTHON) -m venv $(VENV)

# The second install: the libraries the adapters plug into (volley.joblib, volley.dask) and
# their real users in the tests (scikit-learn, DEAP), and tqdm for progress bars.
$(DEPS): pyproject.toml | $(VPY)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet "maturin>=1.14,<2" "cloudpickle>=2.2" "pytest>=7" "pytest-timeout>=2" numpy pandas ruff
	$(VPY) -m pip install --quiet joblib scikit-learn "dask[array,dataframe,bag]" deap tqdm
	$(VPY) -m pip install --quiet "mypy>=1.11"
	@# CPython's test_concurrent_futures for tests/peers/test_cpython_futures.py: Debian ships it
	@# apart from the interpreter (the harness skips, saying so, where it cannot be installed).
	@test -f /usr/lib/python3.11/test/test_concurrent_futures.py || ! command -v apt-get >/dev/null \
		|| apt-get install -y -q libpython3.11-testsuite >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q libpython3.11-testsuite >/dev/null) \
		|| echo "note: could not install libpython3.11-testsuite (CPython's test_concurrent_futures)"
	touch $@

$(BUILT): $(DEPS) $(RUST_SRC) pyproject.toml
	$(VENV)/bin/maturin develop --release --quiet
	touch $@

build: $(BUILT)

demo: build
	$(VPY) examples/demo.py

test-rust:
	cargo test --workspace --exclude volley-py

test-python: build
	$(VPY) -m pytest tests

test: build test-rust test-python test-cluster

# The end-to-end tests that use the shared 2-CPU fixtures, run again against a real cluster (a
# head with no CPUs and two 1-CPU nodes on 127.0.0.x, the test process a driver) instead of an
# embedded node. Tests whose premise is one machine are marked `one_node` and skipped there.
CLUSTER_SUITE = tests/test_tasks.py tests/test_errors.py tests/test_async.py tests/test_actors.py \
	tests/test_cancel.py tests/test_object_store.py tests/test_faults.py tests/test_logging.py \
	tests/test_map.py tests/test_futures.py tests/test_multiprocessing.py tests/test_joblib.py \
	tests/test_dask.py tests/test_deap.py tests/test_executor_compat.py tests/test_pool_sharing.py \
	tests/test_manager_proxies.py tests/test_ray_compat.py
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

bench: $(DEPS) $(BENCH_DEPS)
	rm -rf target/wheels
	$(VENV)/bin/maturin build --release --quiet --out target/wheels
	$(BENCH_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps target/wheels/*.whl
	$(BENCH_VENV)/bin/python -m pip install --quiet "cloudpickle>=2.2"
	$(BENCH_VENV)/bin/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf target $(VENV) $(BENCH_VENV) python/volley/*.so
