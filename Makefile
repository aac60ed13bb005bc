# The commands the README names. `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
DEPS_STAMP := build/.deps-stamp
NATIVE_SRC := $(wildcard native/src/*.c native/include/*.h) native/build_ffi.py

.PHONY: run test native lint install clean deps sysdeps bench

# Python dependencies and the C data plane (editable install: sources stay in the tree).
deps: $(DEPS_STAMP)
$(DEPS_STAMP): pyproject.toml setup.py $(NATIVE_SRC)
	$(PIP) install --quiet --disable-pip-version-check -e '.[test,dev]'
	@mkdir -p build && touch $@

# Debian packages the tests use as independent oracles (tshark). Best effort: tests that
# need them skip with the reason when they are missing.
sysdeps:
	@sh scripts/install-sysdeps.sh

native: deps
	$(PYTHON) setup.py -q build_ext --inplace

run: deps
	$(PYTHON) -m rnicd.cli $(ARGS)

test: deps sysdeps
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

lint: deps
	$(PYTHON) -m ruff check rnicd clients tests bench native/build_ffi.py

bench: deps
	@sh scripts/install-bench-deps.sh
	$(PIP) install --quiet --disable-pip-version-check -e '.[bench]'
	$(PYTHON) bench/run.py $(ARGS)

# The package (with its C module), the systemd units, the sysusers entry for the group rnic
# and a commented default config (never overwriting an existing one).
install:
	$(PIP) install --quiet --disable-pip-version-check --no-warn-script-location \
		$(if $(DESTDIR),--root $(DESTDIR)) --prefix $(PREFIX) .
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(SYSCONFDIR)/rnicd
	sed 's|@BINDIR@|$(PREFIX)/bin|g' systemd/rnicd.service > $(DESTDIR)$(UNITDIR)/rnicd.service
	install -m 644 systemd/rnicd.socket $(DESTDIR)$(UNITDIR)/rnicd.socket
	install -m 644 systemd/rnicd.sysusers $(DESTDIR)$(SYSUSERSDIR)/rnicd.conf
	test -e $(DESTDIR)$(SYSCONFDIR)/rnicd/rnicd.toml || \
		install -m 644 etc/rnicd.toml $(DESTDIR)$(SYSCONFDIR)/rnicd/rnicd.toml

clean:
	rm -rf build dist *.egg-info rnicd/_native*.so rnicd/_native.c .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
