# Two commands for a fresh machine: `make run` and `make test`.
# Both install what is missing: Debian/Ubuntu packages (as root), then a
# virtualenv with the pinned Python packages. `make run` installs only what
# running needs; `make test` adds the test tools (TEST_SYSTEM_PACKAGES,
# tests/requirements.txt). Each half has its own stamp, so switching between
# the two installs nothing twice.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
SYSTEM_PACKAGES := python3-venv python3-dev gcc pkg-config libvirt-dev redis-server \
	qemu-system-x86 qemu-utils libvirt-daemon libvirt-clients wireguard-tools wireguard-go \
	iproute2 nftables debootstrap e2fsprogs
TEST_SYSTEM_PACKAGES := chromium iputils-ping knot knot-dnsutils genisoimage
PYTEST_ARGS ?=
# cloud-init's own JSON schema, which validates appliances' user-data.
CLOUD_INIT_SCHEMA := $(VENV)/share/cloud-init/schema-cloud-config-v1.json

.PHONY: run test test-unit install install-test system-packages test-system-packages clean

run: install
	$(PY) -m infrasim_site.stack

# pytest exits 5 when it collected no tests; make treats that as the failure it is.
test: install-test
	$(PY) -m pytest $(PYTEST_ARGS)

# The fast tier: pure modules, no database, Redis or servers; seconds.
test-unit: install-test
	$(PY) -m pytest tests/unit -q

install: system-packages $(VENV)/.installed $(CLOUD_INIT_SCHEMA) node_modules/.installed

install-test: install test-system-packages $(VENV)/.installed-test

system-packages: PACKAGES = $(SYSTEM_PACKAGES)
test-system-packages: PACKAGES = $(TEST_SYSTEM_PACKAGES)
system-packages test-system-packages:
	@missing=""; \
	for pkg in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "Missing system packages:$$missing. Install them (as root: apt-get install$$missing)."; exit 1; \
	  fi; \
	fi

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Taken from Debian's cloud-init package without installing cloud-init on
# this host (it would configure the host itself at boot).
$(CLOUD_INIT_SCHEMA): $(VENV)/.installed
	@tmp=$$(mktemp -d) && cd $$tmp && \
	{ apt-get download -qq cloud-init 2>/dev/null || { apt-get update -qq && apt-get download -qq cloud-init; }; } && \
	dpkg-deb -x cloud-init_*.deb root && \
	install -D -m 0644 root/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json $(abspath $@) && \
	rm -rf $$tmp

# Browser libraries (xterm.js), pinned by package-lock.json and served as
# static files (settings.STATICFILES_DIRS), never from a CDN. npm comes with
# Node.js; without it, Debian's npm package brings both.
node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm; \
	  else \
	    echo "npm is missing. Install it (as root: apt-get install npm)."; exit 1; \
	  fi; \
	}
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(VENV)/.installed-test: tests/requirements.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r tests/requirements.txt
	touch $@

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis node_modules
