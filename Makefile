# mailpipe — every entry point a newcomer needs. `make run` and `make test` set up a fresh machine.
PYTHON ?= python3
VENV := .venv
CHECKOV_VENV := .venv-checkov
MINISTACK_VENV := .venv-ministack
PY := $(VENV)/bin/python

.PHONY: install run test unit integration e2e demo bench bench-tracking bench-imports bench-audiences token lint package deploy destroy browser checkov clean

install: $(VENV)/.installed $(MINISTACK_VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade 'pip<26.3'  # chalice 1.34 wants pip < 26.3
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

# MiniStack, the embedded AWS emulator (infra/local/emulator.py), in a virtualenv of its own: it pins botocore.
$(MINISTACK_VENV)/.installed: requirements-ministack.txt
	$(PYTHON) -m venv $(MINISTACK_VENV)
	$(MINISTACK_VENV)/bin/pip install --quiet -r requirements-ministack.txt
	touch $@

# Debian's Chromium for the dashboard tests (Playwright never downloads a browser here).
browser:
	@test -x /usr/bin/chromium || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "could not install chromium: the e2e tests will fail"; }

# checkov in a virtualenv of its own: it pins boto3 and others apart from requirements.txt.
checkov: $(CHECKOV_VENV)/.installed

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	touch $@

run: install
	$(PY) -m infra.local run

test: install browser checkov
	$(PY) -m pytest

unit: install
	$(PY) -m pytest -m unit

integration: install checkov
	$(PY) -m pytest -m integration

e2e: install browser
	$(PY) -m pytest -m e2e

demo: install
	$(PY) -m infra.local demo --n $(or $(N),1000)

bench: install
	$(PY) -m bench.run --n $(or $(N),10000)

# Open-pixel and click requests/s against a static page on the same local gateway, DynamoDB writes per event.
bench-tracking: install
	$(PY) -m bench.tracking --seconds $(or $(SECONDS),5)

# A 100,000-row CSV through the presigned URL: rows/s, peak memory, and the raw BatchWriteItem ceiling.
bench-imports: install
	$(PY) -m bench.imports --n $(or $(N),100000)

# Big lists: a 100,000-row import, POST /campaigns accept time for a 1,000 and a 100,000 list, the
# fan-out rate against its raw ceiling, the send queue's greatest depth, the runtime's peak memory.
bench-audiences: install
	$(PY) -m bench.audiences --n $(or $(N),100000)

token: install
	@$(PY) -m infra.local token --tenant $(or $(TENANT),demo)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Production path (README "Deploying"): STAGE=dev|prod|local, PARAMETERS="SmtpHost=… JwtIssuer=…".
# AWS_ENDPOINT_URL points it at LocalStack or an emulator instead of AWS.

deploy: install
	$(PY) -m infra.deploy deploy --stage $(or $(STAGE),dev) $(foreach p,$(PARAMETERS),--parameter $(p))

destroy: install
	$(PY) -m infra.deploy destroy --stage $(or $(STAGE),dev) $(if $(filter yes,$(DELETE_TABLES)),--delete-tables)

package: install
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(PY) -m infra.deploy package --stage $(or $(STAGE),prod) packaged/

clean:
	rm -rf .local packaged .pytest_cache
