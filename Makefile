# The io_uring lab. `make run L=07` runs a lesson; `make test` runs every test.
# Both install what they need first (liburing-dev, with apt-get) and build from scratch.

SWIFT ?= swift
L ?=
ARGS ?=
KERNEL ?= $(shell uname -r)

.PHONY: help setup build test test-kernels run list clean

help:
	@echo "make run L=NN [ARGS='...']  build and run lesson NN (e.g. make run L=07)"
	@echo "make test                   set up, build, and run every lesson's test"
	@echo "make test-kernels           the same tests on Debian's Linux 6.1 and 6.12 (in QEMU) and on this kernel"
	@echo "make list                   the lessons, the kernel each needs, and whether this one is new enough"
	@echo "make setup                  install liburing-dev if pkg-config cannot find liburing"
	@echo "make build                  build every lesson"
	@echo "make clean                  remove the build directory"

# liburing comes from Debian/Ubuntu's liburing-dev (2.3 on Debian 12); pkg-config finds it.
setup:
	@command -v $(SWIFT) >/dev/null || { echo "error: '$(SWIFT)' not found: install Swift 6 (https://www.swift.org/install/linux/)"; exit 1; }
	@if command -v pkg-config >/dev/null && pkg-config --exists liburing; then \
		echo "setup: liburing $$(pkg-config --modversion liburing) found"; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "setup: installing liburing-dev and pkg-config with apt-get"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq liburing-dev pkg-config >/dev/null \
			&& echo "setup: liburing $$(pkg-config --modversion liburing) installed"; \
	else \
		echo "error: liburing is not installed, and installing it needs root:"; \
		echo "    sudo apt-get install liburing-dev pkg-config    (or: sudo make setup)"; \
		exit 1; \
	fi

build: setup
	$(SWIFT) build

test: build
	$(SWIFT) test --disable-swift-testing

# The bundle `make test` runs, run again in QEMU on Debian's kernels: .ci/test-kernels says how.
test-kernels: setup
	$(SWIFT) build --build-tests
	.ci/test-kernels "$$($(SWIFT) build --show-bin-path)"

# L may be 7 or 07; the lesson is found by its number alone.
run: setup
	@test -n "$(L)" || { echo "usage: make run L=NN [ARGS='...']   (make list shows the lessons)"; exit 1; }
	@num=$$(printf '%02d' "$$(echo $(L) | sed 's/^0*\([0-9]\)/\1/')" 2>/dev/null); \
	name=$$(cd Sources && ls -d lesson-$$num-* 2>/dev/null | head -n 1); \
	test -n "$$name" || { echo "error: there is no lesson $(L) (make list shows the lessons)"; exit 1; }; \
	$(SWIFT) build --quiet --product $$name || exit 1; \
	status=0; "$$($(SWIFT) build --show-bin-path)/$$name" $(ARGS) || status=$$?; \
	if [ $$status = 77 ]; then echo "($$name was skipped on this machine: exit 77)"; exit 0; fi; \
	exit $$status

# Each lesson's kernel comes from the **Kernel:** line of its prose; "ok" when this machine's
# kernel (uname -r; `make list KERNEL=6.1` asks about another) is at least that. A lesson that still lacks something (a filesystem, a
# privilege) says so when run, and exits 77.
list:
	@running=$$(echo "$(KERNEL)" | sed 's/[^0-9.].*//'); \
	echo "checked against Linux $$running ($(if $(filter command line environment,$(origin KERNEL)),KERNEL=$(KERNEL),this machine's kernel: uname -r))"; \
	for prose in lessons/[0-9][0-9]-*.md; do \
		slug=$$(basename $$prose .md); \
		kernel=$$(sed -n 's/^\*\*Kernel:\*\* *Linux \([0-9.]*\).*/\1/p' $$prose | head -n 1); \
		title=$$(head -n 1 $$prose | sed 's/^# Lesson [0-9]* — //'); \
		oldest=$$(printf '%s\n%s\n' "$$kernel" "$$running" | sort -V | head -n 1); \
		if [ "$$oldest" = "$$kernel" ]; then here=ok; else here="too old here"; fi; \
		printf '%-34s Linux %-5s %-13s %s\n' "lesson-$$slug" "$$kernel" "$$here" "$$title"; \
	done

clean:
	rm -rf .build
