# ngx-gpu - top-level targets.  `make run` and `make test` are all a new
# machine needs (Debian bookworm); see README.md.

SHELL      := /bin/bash
TOP        := $(CURDIR)
B          := $(TOP)/build
# the nginx build runs in NGINX_SRC: a relative B= must mean this folder's
override B := $(abspath $(B))
NGINX_SRC  ?= /usr/share/nginx/src
NGINX_BIN  ?= /usr/sbin/nginx
PORT       ?= 8080
MODEL      ?=
DEVICE     ?= auto
CHAT_TEMPLATE ?=
SHARED     ?= $(abspath $(TOP)/../shared)

MODULE     := $(B)/nginx/ngx_http_gpu_module.so
BACKEND    := $(B)/gpu_backend
STORIES    := $(B)/models/stories260K
RANDOM_MODEL := $(B)/models/ngx-gpu-random-tiny

MODULE_SRCS  := config $(wildcard ngx_module/*.c ngx_module/*.h) \
                gpu_backend/channel.c gpu_backend/channel.h
BACKEND_SRCS := $(wildcard gpu_backend/*.c gpu_backend/*.h gpu_backend/*.cu \
                  gpu_backend/*.cuh gpu_backend/tools/*.c \
                  t/unit/*.c t/unit/*.h)

.PHONY: all deps build module backend models run stop test test-unit \
        test-nginx test-gpu bench clean

all: build

deps:
	@scripts/install-deps

build: module backend

module: $(MODULE)
backend: $(BACKEND)

# nginx's own build of a dynamic module against Debian's nginx-dev
$(MODULE): $(MODULE_SRCS)
	@mkdir -p $(B)/nginx
	cd $(NGINX_SRC) && ./configure --with-compat --with-debug \
	    --add-dynamic-module=$(TOP) --builddir=$(B)/nginx >$(B)/nginx/configure.log
	$(MAKE) -s -f $(B)/nginx/Makefile -C $(NGINX_SRC) modules

$(BACKEND): $(BACKEND_SRCS) gpu_backend/Makefile
	$(MAKE) -s -C gpu_backend O=$(B) all

# the real trained model from ../shared, converted (never committed)
$(STORIES)/config.json:
	@if [ -f $(SHARED)/models/stories260K/stories260K.bin ]; then \
	    scripts/convert-llama2c $(SHARED)/models/stories260K/stories260K.bin \
	        $(SHARED)/models/stories260K/tok512.bin $(STORIES); \
	else echo "models: $(SHARED)/models/stories260K absent, skipped"; fi

$(RANDOM_MODEL)/config.json:
	scripts/make-random-llama --out $(RANDOM_MODEL)

models: $(STORIES)/config.json $(RANDOM_MODEL)/config.json

run: deps build $(RANDOM_MODEL)/config.json
	@scripts/run-server start --port $(PORT) --device $(DEVICE) \
	    $(if $(MODEL),--model $(MODEL)) \
	    $(if $(CHAT_TEMPLATE),--chat-template $(CHAT_TEMPLATE))

stop:
	@scripts/run-server stop

test:
	@scripts/install-deps --test
	@$(MAKE) -s build models
	@t/run

test-unit: build models
	@t/run unit

test-nginx: build models
	@t/run nginx

test-gpu: build models
	@t/run gpu

bench: build models
	@NGX_GPU_BUILD=$(B) scripts/bench

clean:
	rm -rf $(B) t/servroot*
