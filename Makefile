# The two quick-start commands. Each sets up what it needs in ./.venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: dev test sim sweep faults faketime bench-single bench-peers lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Starts a local 3-node cluster (data in ./.paxq-dev; Ctrl-C stops it; run again to resume).
dev: $(STAMP)
	$(VENV)/bin/paxq dev

# Runs the whole test suite (ruff, unit, property, simulator and real-process tests).
test: $(STAMP) faketime
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

# One simulator seed (override: make sim ARGS="--seed 7 --nodes 5 --steps 20000").
sim: $(STAMP)
	$(VENV)/bin/paxq sim $(ARGS)

# The long sweep: 1,000 seeds of 20,000 steps at 5 replicas, every fault on (about 1.5 h on 2 cores).
sweep: $(STAMP)
	$(VENV)/bin/paxq sim --seeds 1000 --nodes 5 --steps 20000 $(ARGS)

# The fault suite on real processes, longer than the test suite's bounded run.
SECONDS ?= 300
SEED ?= 1
faults: $(STAMP) faketime
	$(VENV)/bin/python tests/faults/runner.py --seconds $(SECONDS) --seed $(SEED) $(ARGS)

# libfaketime (Debian) lets the fault suite start a node with its clock off.
faketime:
	@ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	       && { apt-get install -y -q libfaketime >/dev/null 2>&1 \
	            || { apt-get update -q >/dev/null && apt-get install -y -q libfaketime >/dev/null; }; }; } \
	  || echo "libfaketime is not installed: the fault suite skips clock faults"

# Single publishes against another commit's tree: make bench-single BASE=/tmp/base
bench-single: $(STAMP)
	$(VENV)/bin/python benchmarks/single_publish.py --baseline-tree $(BASE) $(ARGS)

# paxq beside RabbitMQ quorum queues and NATS JetStream (Debian's servers), in one run:
# make bench-peers ARGS="--rounds 3 --json peers.json"
bench-peers: $(STAMP)
	@command -v nats-server >/dev/null && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] \
	  || apt-get install -y -q rabbitmq-server nats-server >/dev/null \
	  || { apt-get update -q >/dev/null && apt-get install -y -q rabbitmq-server nats-server >/dev/null; }
	$(VENV)/bin/pip install --quiet -e '.[bench]'
	$(VENV)/bin/python benchmarks/peers.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .paxq-dev
