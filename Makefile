# The commands the README names. `make run` and `make test` do all set-up on a fresh machine.
#
# Everything runs in the project's virtualenv $(VENV), made with whatever python3 is first on
# PATH: Debian's own python3 is externally managed (PEP 668) and never installed into.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
VPIP := $(VPY) -m pip --disable-pip-version-check
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
# the service's own virtualenv (make install)
LIBDIR ?= $(PREFIX)/lib/rnicd
DEPS_STAMP := $(VENV)/.rnicd-deps
NATIVE_SRC := $(wildcard native/src/*.c native/src/*.h native/include/*.h) native/build_ffi.py

.PHONY: run test native lint install clean distclean deps sysdeps bench venv pyverbs-suite clib

venv: $(VPY)
$(VPY):
	@sh scripts/make-venv.sh $(PYTHON) $(VENV)

# Python dependencies and the C data plane (editable install: sources stay in the tree).
deps: $(DEPS_STAMP) clib
$(DEPS_STAMP): $(VPY) pyproject.toml setup.py $(NATIVE_SRC)
	$(VPIP) install --quiet -e '.[test,dev]'
	@touch $@

# Debian packages the tests use as independent oracles (tshark). Best effort: tests that
# need them skip with the reason when they are missing.
sysdeps:
	@sh scripts/install-sysdeps.sh

native: deps
	$(VPY) setup.py -q build_ext --inplace

run: deps
	@echo "rnicd: starting; in another shell: $(VENV)/bin/rnic devinfo  (Ctrl-C stops it)"
	$(VPY) -m rnicd.cli $(ARGS)

# rnicd's libibverbs.so.1 (clients/c) into the rnic package's private lib/ (`rnic libdir`).
# Best effort: without libibverbs-dev/libmsgpack-dev (make sysdeps) the C tests skip.
clib: sysdeps
	@$(MAKE) -s -C clients/c OUT=../python/rnic/lib || echo "clib: not built (see above)" >&2

test: deps sysdeps clib
	$(VPY) -m pytest -q $(PYTEST_ARGS)

# rdma-core 44's own pyverbs tests against rnic (python3-pyverbs installed when root; a private
# net+mount namespace per file): per-file pass/fail/error/skip. `make test` runs it too.
pyverbs-suite: deps
	$(VPY) tests/pyverbs_suite/run_suite.py --files all $(ARGS)

lint: deps
	$(VPY) -m ruff check rnicd clients tests bench native/build_ffi.py

# ARGS=--update-readme also rewrites README.md's Performance section from the results.
bench: deps clib
	@sh scripts/install-bench-deps.sh
	$(VPIP) install --quiet -e '.[bench]'
	$(VPY) bench/run.py $(ARGS)

# System-wide, for the service: the package (with its C module) in a virtualenv of its own,
# $(LIBDIR), made with $(PYTHON), and $(PREFIX)/bin/rnicd and rnic linking to its scripts.
# It never installs into, or uninstalls from, the Python that runs make (pip only ever sees
# the new venv), nor into Debian's externally managed Python. With DESTDIR (a staged install
# for packaging) the venv is made under DESTDIR and its paths are rewritten to $(LIBDIR).
# Then the systemd units, the sysusers entry for the group rnic and a commented default
# config (never overwriting an existing one).
install:
	rm -rf $(DESTDIR)$(LIBDIR)
	sh scripts/make-venv.sh $(PYTHON) $(DESTDIR)$(LIBDIR)
	env -u PYTHONPATH $(DESTDIR)$(LIBDIR)/bin/python -m pip --disable-pip-version-check \
		install --quiet $(if $(DESTDIR),--no-compile) .
	$(if $(DESTDIR),sh scripts/relocate-venv.sh $(DESTDIR) $(LIBDIR))
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) \
		$(DESTDIR)$(SYSCONFDIR)/rnicd
	ln -sfn $(LIBDIR)/bin/rnicd $(DESTDIR)$(PREFIX)/bin/rnicd
	ln -sfn $(LIBDIR)/bin/rnic $(DESTDIR)$(PREFIX)/bin/rnic
	sed 's|@BINDIR@|$(PREFIX)/bin|g' systemd/rnicd.service > $(DESTDIR)$(UNITDIR)/rnicd.service
	install -m 644 systemd/rnicd.socket $(DESTDIR)$(UNITDIR)/rnicd.socket
	install -m 644 systemd/rnicd.sysusers $(DESTDIR)$(SYSUSERSDIR)/rnicd.conf
	test -e $(DESTDIR)$(SYSCONFDIR)/rnicd/rnicd.toml || \
		install -m 644 etc/rnicd.toml $(DESTDIR)$(SYSCONFDIR)/rnicd/rnicd.toml

clean:
	rm -rf build dist *.egg-info rnicd/_native*.so rnicd/_native.c .pytest_cache
	rm -rf clients/c/build clients/python/rnic/lib
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

# `make clean` keeps the venv (its downloads); this removes it too.
distclean: clean
	rm -rf $(VENV)
