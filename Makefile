# Parley: the two commands that matter are `make run` and `make test`.
# Both install what is missing (scripts/setup), then build with CMake + Ninja.

RELEASE := build/release
ASAN    := build/asan
PORT    ?= 8080
NODE_TEST := node --test --test-reporter=spec

.PHONY: all run test setup setup-test build asan build-matrix unit unit-asan e2e e2e-asan e2e-pg e2e-v2 sdk browser test-asan fuzz fuzz-smoke bench bench-report bench-test bench-cluster bench-search clean cluster cluster-down test-cluster

all: build

setup:
	@scripts/setup

setup-test:
	@scripts/setup --test

# Our trees are developer builds: warnings are errors (PARLEY_WERROR, off in
# a plain CMake build). A tree is configured when missing, or when it was made
# before that option.
CONFIGURE = { [ -f $(1)/build.ninja ] && grep -qs '^PARLEY_WERROR:BOOL=ON' $(1)/CMakeCache.txt; } || \
	cmake -S . -B $(1) -G Ninja -DPARLEY_WERROR=ON $(2) >/dev/null

build: setup
	@$(call CONFIGURE,$(RELEASE),-DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS_RELEASE="-O2 -g -DNDEBUG")
	@ninja -C $(RELEASE) --quiet

asan: setup-test
	@$(call CONFIGURE,$(ASAN),-DCMAKE_BUILD_TYPE=Debug -DPARLEY_SANITIZE=ON)
	@ninja -C $(ASAN) --quiet

# parleyd and the unit tests with gcc and clang at every optimization level,
# warnings as errors (scripts/build-matrix; build/matrix-*).
build-matrix: setup-test
	@scripts/build-matrix

# Starts the embedded server on 127.0.0.1:$(PORT) with data in ./data.
run: build
	@mkdir -p data
	@echo "Parley is starting: open http://127.0.0.1:$(PORT)/ (Ctrl-C stops it)"
	@exec $(RELEASE)/parleyd --listen 127.0.0.1:$(PORT) --data ./data

# Reconfigure first: a tree built by `make run` before cmocka was installed
# has no unit tests yet. --no-tests=error: zero tests is a failure, not a pass.
# The store's tests run on SQLite and on PostgreSQL (test_*_pg): PGTMP starts a
# throwaway PostgreSQL in the tree for the run and stops it after.
PGTMP = $(CURDIR)/scripts/pgtmp exec $(CURDIR)/$(1)/pgtmp
unit: setup-test build
	@cmake -S . -B $(RELEASE) >/dev/null && ninja -C $(RELEASE) --quiet
	@cd $(RELEASE) && $(call PGTMP,$(RELEASE)) ctest --output-on-failure --no-tests=error

unit-asan: asan
	@cd $(ASAN) && ASAN_OPTIONS=detect_leaks=1 $(call PGTMP,$(ASAN)) ctest --output-on-failure --no-tests=error

e2e: build
	@cd tests && PARLEYD=$(CURDIR)/$(RELEASE)/parleyd $(NODE_TEST) e2e/*.test.mjs

e2e-asan: asan
	@cd tests && PARLEYD=$(CURDIR)/$(ASAN)/parleyd ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 $(NODE_TEST) e2e/*.test.mjs

# The version-2 end-to-end files (tests/e2e/v2-*.test.mjs) on the PostgreSQL store: a throwaway
# PostgreSQL (scripts/pgtmp, its own directory) for the run; every parleyd of the run uses it
# through PARLEY_DB_URL, each in a fresh schema (tests/e2e/v2-helpers.mjs). `make e2e` runs
# the same files on SQLite; `make e2e-v2` runs them on both stores, SQLite first.
V2_E2E := e2e/v2-*.test.mjs
e2e-pg: setup-test build
	@cd tests && PARLEYD=$(CURDIR)/$(RELEASE)/parleyd $(CURDIR)/scripts/pgtmp exec $(CURDIR)/$(RELEASE)/pgtmp-e2e \
	  sh -c 'PARLEY_E2E_PG_URL=$$PARLEY_TEST_PG_URL exec $(NODE_TEST) $(V2_E2E)'

e2e-v2: build
	@cd tests && PARLEYD=$(CURDIR)/$(RELEASE)/parleyd $(NODE_TEST) $(V2_E2E); rc=$$?; \
	  $(MAKE) --no-print-directory -C $(CURDIR) e2e-pg || rc=1; exit $$rc

sdk: build
	@cd tests && if ls sdk/*.test.mjs >/dev/null 2>&1; then PARLEYD=$(CURDIR)/$(RELEASE)/parleyd $(NODE_TEST) sdk/*.test.mjs; fi

browser: build
	@cd tests && if ls browser/*.test.mjs >/dev/null 2>&1; then PARLEYD=$(CURDIR)/$(RELEASE)/parleyd $(NODE_TEST) browser/*.test.mjs; fi

# A local cluster (scripts/cluster): Redis, PostgreSQL primary + streaming replica,
# three nodes and HAProxy on 127.0.0.1:$(CLUSTER_PORT), under $(CLUSTER_DIR).
CLUSTER_DIR  ?= /tmp/parley-cluster
CLUSTER_PORT ?= 18080
cluster: setup-test build
	@scripts/cluster up --dir $(CLUSTER_DIR) --port $(CLUSTER_PORT)
	@echo "open http://127.0.0.1:$(CLUSTER_PORT)/ ; scripts/cluster status|down --dir $(CLUSTER_DIR)"

cluster-down:
	@scripts/cluster down --dir $(CLUSTER_DIR)

# The cluster tests against a cluster of their own (two Redis servers), started
# and stopped here whatever the tests do.
TEST_CLUSTER_DIR := /tmp/parley-cluster-test
test-cluster: setup-test build
	@scripts/cluster down --dir $(TEST_CLUSTER_DIR) >/dev/null 2>&1 || true
	@rm -rf $(TEST_CLUSTER_DIR)
	@PARLEY_WORKERS=2 PARLEY_SEND_RATE=0 PARLEY_SEND_BURST=0 PARLEY_DRAIN_DELAY_S=1 PARLEY_DRAIN_SECONDS=2 \
	  scripts/cluster up --dir $(TEST_CLUSTER_DIR) --port 28080 --redis 2
	@cd tests && PARLEY_CLUSTER_DIR=$(TEST_CLUSTER_DIR) $(NODE_TEST) --test-timeout=300000 cluster/*.test.mjs; \
	  rc=$$?; cd .. && scripts/cluster down --dir $(TEST_CLUSTER_DIR) --clean >/dev/null; exit $$rc

# Installs parleyd (PREFIX/bin) and the web client (PREFIX/share/parley/web), which the
# installed parleyd serves without --web; DESTDIR stages. From a tree of its own
# (build/install: Release, warnings not errors), so the developer trees are untouched.
PREFIX ?= /usr/local
# Faults and soak (tests/soak), not part of make test: crash consistency under kill -9
# (CRASH_REPS, default 20, on SQLite; once on PostgreSQL), then SOAK_MINUTES (10) of mixed
# load from SOAK_CLIENTS (1000) clients with a delivery checker and RSS samples. Writes
# tests/soak/last-report.md.
.PHONY: soak test-valgrind
soak: setup-test build
	@cd tests && PARLEYD=$(CURDIR)/$(RELEASE)/parleyd node soak/main.mjs

# The e2e suite once against parleyd under valgrind memcheck (tests/soak/valgrind.sh).
test-valgrind: setup-test build
	@tests/soak/valgrind.sh

.PHONY: install deploy-check
install: setup
	@cmake -S . -B build/install -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	@ninja -C build/install --quiet parleyd-installed
	@DESTDIR=$(DESTDIR) cmake --install build/install

# The deploy bundles, checked as far as this machine can (deploy/check: YAML, haproxy -c,
# nginx -t, and the Dockerfile's build and run steps as a script).
deploy-check: setup-test
	@deploy/check

# The sanitizer half of the suite on its own (make test runs it too).
test-asan: unit-asan e2e-asan

# Everything: the gcc/clang build matrix, unit tests (normal and ASan+UBSan),
# end-to-end against both builds, the SDK, the browser client and the cluster.
test: setup-test build asan
	@$(MAKE) --no-print-directory -k build-matrix unit unit-asan e2e e2e-asan e2e-pg sdk browser test-cluster fuzz-smoke deploy-check

# Coverage-guided fuzzing of our parsers (scripts/fuzz): each target for
# FUZZ_SECONDS from the seed corpus of fuzz/corpus/; make test runs each for 10 s.
FUZZ_SECONDS ?= 60
fuzz: setup-test
	@scripts/fuzz $(FUZZ_SECONDS)

fuzz-smoke: setup-test
	@scripts/fuzz 10

# parleyd against the baselines (../shared/baselines), ratios in one run: docs/BENCHMARKS.md.
# The standard suite: parleyd, parleyd-batch1, node-ref, uws-ref, uws-nostore (fan-out cells),
# 2 rounds, under 15 minutes on 2 cores with a cold setup cache (bench/.cache/; rm -rf it to
# start cold). It prints its total wall time at the end.
# BASE=<git ref>: that commit's parleyd too (built in build/base-<sha>), as parleyd-base;
# QUICK=1: small sizes, one round (with BASE: parleyd against parleyd-base only);
# SEARCH=1: bench/search.mjs (1,000,000 messages) afterwards, CLUSTER=1: bench/cluster.sh
# afterwards (or make bench-search / bench-cluster alone);
# BENCH_ARGS: more arguments for bench/run.sh. The results go to BENCH_OUT (default
# bench/results/<date>-<time>-<commit>[-quick].json, and .md); bench/report.mjs then renders the
# plots (gnuplot, docs/bench/*.svg) and rewrites the generated section of docs/BENCHMARKS.md.
bench: setup-test build
	@t0=$$(date +%s); out=$(or $(BENCH_OUT),bench/results/$$(date -u +%Y-%m-%d-%H%M)-$$(git rev-parse --short HEAD 2>/dev/null || echo tree)$(if $(QUICK),-quick).json); \
	  st=0; bench/run.sh $(if $(BASE),--base $(BASE)) $(if $(QUICK),--quick --reps 1) --out $$out $(BENCH_ARGS) || st=$$?; \
	  if [ -f $$out ]; then node bench/report.mjs $$out || st=1; fi; \
	  if [ "$(SEARCH)" = 1 ]; then node bench/search.mjs $(if $(QUICK),--quick) $(SEARCH_ARGS) || st=1; fi; \
	  if [ "$(CLUSTER)" = 1 ]; then bench/cluster.sh $(if $(QUICK),--quick) $(CLUSTER_ARGS) || st=1; fi; \
	  t=$$(( $$(date +%s) - t0 )); \
	  echo "make bench: $$( [ $$st = 0 ] && echo done || echo 'FAILED (see above)') in $$((t / 60)) min $$((t % 60)) s wall$(if $(filter 1,$(SEARCH)), with search)$(if $(filter 1,$(CLUSTER)), with cluster); results $$out; load average $$(cut -d' ' -f1-3 /proc/loadavg)"; \
	  exit $$st

# The plots and the generated section of docs/BENCHMARKS.md again, from one results file
# (RESULTS=bench/results/....json; default: the newest there).
bench-report: setup-test
	@node bench/report.mjs $(or $(RESULTS),$$(ls -t bench/results/*.json | head -1))

# The tests of bench/report.mjs (on stored results files; no server runs) and of the setup
# cache of parley-load (bench/cache.test.mjs: tiny runs against build/release/parleyd, ~15 s).
bench-test:
	@node --test bench/report.test.mjs bench/cache.test.mjs

# Search latency over 1,000,000 stored messages alone (bench/search.mjs, docs/BENCHMARKS.md);
# not part of the standard make bench (make bench SEARCH=1 adds it).
bench-search: setup-test build
	@node bench/search.mjs $(if $(QUICK),--quick) $(SEARCH_ARGS)

# The cluster's cost figures alone (bench/cluster.sh, docs/BENCHMARKS.md "Cluster: cost figures
# and capacity model"); not part of the standard make bench (make bench CLUSTER=1 adds them).
bench-cluster: setup-test build
	@bench/cluster.sh $(if $(QUICK),--quick) $(CLUSTER_ARGS)

clean:
	rm -rf build
