# slurm-scratch — see README.md.  Everything here runs as root on a Debian 12 machine.
PREFIX ?= /usr/local
PYTHON ?= /usr/bin/python3
VENV = $(PREFIX)/lib/slurm-scratch/venv
LIBEXEC = $(PREFIX)/libexec/slurm-scratch
HOOKS = prolog epilog task_prolog healthcheck
PYTEST_ARGS ?=

.PHONY: install uninstall test bench demo deps

install:
	$(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-cache-dir .
	install -d $(PREFIX)/bin $(LIBEXEC)
	ln -sfn ../lib/slurm-scratch/venv/bin/slurm-scratch $(PREFIX)/bin/slurm-scratch
	site=$$($(VENV)/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	for hook in $(HOOKS); do \
		sed -e '1s|^#!.*|#!$(VENV)/bin/python3 -IS|' \
		    -e "s|^SITE_PACKAGES = None.*|SITE_PACKAGES = '$$site'|" hooks/_hook > $(LIBEXEC)/$$hook.tmp && \
		chmod 0755 $(LIBEXEC)/$$hook.tmp && mv -f $(LIBEXEC)/$$hook.tmp $(LIBEXEC)/$$hook || exit 1; \
	done
	@echo "installed: $(PREFIX)/bin/slurm-scratch and $(LIBEXEC)/{$(shell echo $(HOOKS) | tr ' ' ,)}"

uninstall:
	rm -f $(PREFIX)/bin/slurm-scratch $(addprefix $(LIBEXEC)/,$(HOOKS))
	rm -rf $(PREFIX)/lib/slurm-scratch
	-rmdir $(LIBEXEC)

# Debian packages the tests, benchmarks and demo use (CI and a fresh machine run this first).
deps:
	.ci/install-deps

# The test command (README): every suite, as root; the tests make their own private mount namespace.
# pytest's exit code 5 (no test ran) is a failure here, not a pass.
test: deps
	@$(PYTHON) -m pytest -ra -p no:cacheprovider $(PYTEST_ARGS) tests; status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: no test ran" >&2; exit 1; fi; exit $$status

bench: deps
	$(PYTHON) bench/run_all.py

# The main job (README): the whole story on emulated disks and a local Slurm cluster, narrated.
demo: deps
	$(PYTHON) demo/demo.py
