# Gravity build. GNU make; everything lands in $(BUILD) (build/ or build/asan/).
#   make run     install deps, build, start every service (gravity up)
#   make test    install deps, build, run the whole suite (normal build, then ASan+UBSan)
#   make bench   load benchmarks (not part of make test)
#   make fuzz    libFuzzer targets, FUZZ_SECONDS each (default 60)
#   make check   format, banned-function and static checks
#   make chaos   kill -9 chaos of the bus: CHAOS_EVENTS events, CHAOS_KILLS kills per backend
#                (CHAOS_PG_URL= adds PostgreSQL); then of the checkout saga: CHAOS_CHECKOUT_KILLS
#                kill -9 of its participants during CHAOS_CHECKOUT_ORDERS checkouts, on SQLite
#                and PostgreSQL (CHAOS_PG_URL, else a throwaway one)

SAN ?=
ifeq ($(SAN),asan)
CC       := clang
BUILD    ?= build/asan
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
OPT      := -O1 -g
else ifeq ($(SAN),tsan)
CC       := clang
BUILD    ?= build/tsan
SANFLAGS := -fsanitize=thread -fno-omit-frame-pointer
OPT      := -O1 -g
else
CC       ?= gcc
BUILD    ?= build
SANFLAGS :=
OPT      := -O2 -g
endif

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wpointer-arith -Wcast-qual -Wformat=2
CFLAGS  := -std=c17 $(OPT) $(WARN) $(SANFLAGS) -D_GNU_SOURCE -pthread -Ilib/gr/include \
           -I/usr/include/postgresql $(EXTRA_CFLAGS)
LDFLAGS := $(SANFLAGS) -pthread
LIBS    := -lmicrohttpd -ljansson -lsqlite3 -lpq -lnats -lcurl -lssl -lcrypto -largon2 -loath \
           -lcrypt -lhiredis -lm
PY      := /usr/bin/python3

GR_SRC  := $(sort $(wildcard lib/gr/src/*.c))
GR_OBJ  := $(GR_SRC:%.c=$(BUILD)/%.o)
GR_LIB  := $(BUILD)/libgr.a

SERVICES      := $(sort $(notdir $(patsubst %/,%,$(dir $(wildcard services/*/service.c)))))
SERVICE_BINS  := $(SERVICES:%=$(BUILD)/bin/%)
TOOLS         := $(basename $(notdir $(wildcard lib/gr/tools/*.c)))
TOOL_BINS     := $(TOOLS:%=$(BUILD)/bin/%)
UNIT_SRC      := $(wildcard lib/gr/tests/unit/test_*.c)
UNIT_BINS     := $(UNIT_SRC:lib/gr/tests/unit/%.c=$(BUILD)/tests/%) \
                 $(foreach s,$(SERVICES),$(patsubst services/$(s)/tests/unit/%.c,$(BUILD)/tests/$(s)/%,$(wildcard services/$(s)/tests/unit/test_*.c)))
GRAVITY_SRC   := $(wildcard cmd/gravity/*.c)
# Swagger UI for the gateway's /docs (npm swagger-ui-dist), installed once per build directory;
# the gateway reads it from <bindir>/../share/swagger-ui (or GATEWAY_DOCS_DIR).
SWAGGER_UI_VERSION := 5.35.0
SWAGGER_UI_DIR     := $(BUILD)/share/swagger-ui
SWAGGER_UI_FILES   := swagger-ui.css index.css swagger-ui-bundle.js swagger-ui-standalone-preset.js \
                      oauth2-redirect.html oauth2-redirect.js favicon-16x16.png favicon-32x32.png \
                      LICENSE NOTICE package.json

.PHONY: all deps run test unit http bench chaos fuzz check clean services tools docs
.DEFAULT_GOAL := all

all: $(GR_LIB) $(SERVICE_BINS) $(TOOL_BINS) $(UNIT_BINS) $(BUILD)/bin/gravity docs

deps:
	@scripts/deps.sh

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(GR_LIB): $(GR_OBJ)
	@rm -f $@
	ar rcs $@ $^

# One rule for every service: its .c files plus the generated file that embeds its
# migrations/*.sql and openapi.json (scripts/embed.py).
define SERVICE_RULE
$(BUILD)/gen/$(1)/embed.c: $(wildcard services/$(1)/migrations/*.sql) $(wildcard services/$(1)/openapi.json) scripts/embed.py
	@mkdir -p $$(dir $$@)
	$(PY) scripts/embed.py services/$(1) > $$@.tmp && mv $$@.tmp $$@
$(BUILD)/bin/$(1): $(patsubst %.c,$(BUILD)/%.o,$(wildcard services/$(1)/*.c)) $(BUILD)/gen/$(1)/embed.o $(GR_LIB)
	@mkdir -p $$(dir $$@)
	$(CC) $(LDFLAGS) -o $$@ $$^ $(LIBS)
# A service's own unit tests (tests/unit/test_*.c): linked with its objects but service.c.
$(BUILD)/tests/$(1)/%: $(BUILD)/services/$(1)/tests/unit/%.o $(patsubst %.c,$(BUILD)/%.o,$(filter-out services/$(1)/service.c,$(wildcard services/$(1)/*.c))) $(BUILD)/gen/$(1)/embed.o $(GR_LIB)
	@mkdir -p $$(dir $$@)
	$(CC) $(LDFLAGS) -o $$@ $$^ $(LIBS) -lcmocka
endef
$(foreach s,$(SERVICES),$(eval $(call SERVICE_RULE,$(s))))

$(BUILD)/gen/%.o: $(BUILD)/gen/%.c
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/bin/%: $(BUILD)/lib/gr/tools/%.o $(GR_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/bin/gravity: $(GRAVITY_SRC:%.c=$(BUILD)/%.o) $(GR_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/tests/%: $(BUILD)/lib/gr/tests/unit/%.o $(GR_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) -lcmocka

# Only when missing (package.json is copied last: it marks a complete install). Without npm or
# the registry the build goes on with a warning and the gateway's /docs answers 503 naming this.
docs: $(SWAGGER_UI_DIR)/package.json
$(SWAGGER_UI_DIR)/package.json:
	@rm -rf $(SWAGGER_UI_DIR).npm && mkdir -p $(SWAGGER_UI_DIR).npm $(SWAGGER_UI_DIR)
	@if npm install --prefix $(SWAGGER_UI_DIR).npm --no-audit --no-fund --no-save \
	        --loglevel=error swagger-ui-dist@$(SWAGGER_UI_VERSION) >$(SWAGGER_UI_DIR).log 2>&1; then \
	    d=$(SWAGGER_UI_DIR).npm/node_modules/swagger-ui-dist; \
	    for f in $(filter-out package.json,$(SWAGGER_UI_FILES)) package.json; do \
	        cp $$d/$$f $(SWAGGER_UI_DIR)/ || exit 1; done; \
	    echo "docs: swagger-ui-dist $(SWAGGER_UI_VERSION) installed in $(SWAGGER_UI_DIR)"; \
	else \
	    echo "docs: WARNING: npm install swagger-ui-dist failed (see $(SWAGGER_UI_DIR).log;" \
	         "make deps installs npm): the gateway's /docs answers 503" >&2; \
	fi; rm -rf $(SWAGGER_UI_DIR).npm

services: $(SERVICE_BINS)
tools: $(TOOL_BINS)

run: deps
	@$(MAKE) --no-print-directory all
	@exec $(BUILD)/bin/gravity up

test: deps
	@scripts/test.sh

unit: all
	@scripts/run-unit.sh $(BUILD)

bench: deps
	@$(MAKE) --no-print-directory all
	@bench/run.sh
	@BUILD=$(BUILD) bench/bus.sh
	@BUILD=$(BUILD) bench/auth.sh
	@BUILD=$(BUILD) bench/gateway.sh
	@BUILD=$(BUILD) bench/checkout.sh

CHAOS_EVENTS ?= 100000
CHAOS_KILLS  ?= 20
CHAOS_CHECKOUT_KILLS  ?= 200
CHAOS_CHECKOUT_ORDERS ?= 600
chaos: deps
	@$(MAKE) --no-print-directory all
	@set -e; for be in http nats; do \
	    $(PY) tests/bus/chaos.py $(BUILD) --backend $$be --events $(CHAOS_EVENTS) --kills $(CHAOS_KILLS); \
	    if [ -n "$(CHAOS_PG_URL)" ]; then $(PY) tests/bus/chaos.py $(BUILD) --backend $$be \
	        --events $(CHAOS_EVENTS) --kills $(CHAOS_KILLS) --pg-url "$(CHAOS_PG_URL)"; fi; \
	done
	@tests/chaos/run-checkout-chaos.sh $(BUILD) $(CHAOS_CHECKOUT_KILLS) $(CHAOS_CHECKOUT_ORDERS) \
	    $(CHAOS_PG_URL)

fuzz: deps
	@scripts/fuzz.sh $(FUZZ_SECONDS)

check:
	@scripts/check.sh

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
