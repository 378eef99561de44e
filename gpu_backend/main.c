/*
 * main.c - gpu_backend: options, the supervisor, and the serving process.
 *
 * The supervisor (the process you start) binds the Unix socket and forks
 * the server.  If the server dies after it became ready (a crash, the OOM
 * killer, SIGKILL), the supervisor starts a new one on the same listening
 * socket, so nginx workers only see their connection close and reconnect;
 * connections made meanwhile wait in the listen backlog.  If the server
 * dies before it became ready (a model it cannot load), the supervisor
 * exits with the server's status: a broken configuration fails loudly
 * instead of restarting forever.
 */

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "log.h"
#include "model.h"
#include "scheduler.h"
#include "server.h"
#include "tokenizer.h"

#define EXIT_CONFIG  78                 /* sysexits' EX_CONFIG */


typedef struct {
    const char  *model_dir;
    const char  *socket_path;
    const char  *pid_file;
    const char  *served_name;
    const char  *chat_template;
    int          socket_mode;
    int          supervise;
    int          slots;
    int          max_new_tokens;
    int          max_logprobs;
    int          logprobs_tokens;
    int          overlap;               /* 1 on, 0 off, -1 auto */
    engine_opts_t     engine;
    scheduler_opts_t  sched;
} options_t;


static volatile sig_atomic_t  stop_flag;
static volatile pid_t         child_pid;


static void
usage(FILE *f)
{
    fprintf(f,
"usage: gpu_backend --model DIR --socket PATH [options]\n"
"\n"
"Serves the model in DIR (Hugging Face layout: config.json,\n"
"model.safetensors, tokenizer.json) to nginx workers on the Unix socket\n"
"PATH.  A supervisor restarts the server if it dies.\n"
"\n"
"  --device D            cpu, cuda, cuda:N or auto (default auto)\n"
"  --threads N           CPU engine threads (default 1)\n"
"  --max-seqs N          sequences in a batch at most (default 64)\n"
"  --max-batch-tokens N  tokens in one forward step at most (default 2048)\n"
"  --batch-wait-us N     wait to fill an empty batch (default 0)\n"
"  --slots N             requests queued or running at most (default 256)\n"
"  --max-new-tokens N    largest max_tokens accepted (default: context)\n"
"  --max-logprobs N      logprobs alternatives a request may ask for,\n"
"                        0..20 (default 20)\n"
"  --logprobs-tokens N   largest max_tokens of a request with logprobs\n"
"                        (default: 512 or --max-new-tokens if less)\n"
"  --kv-cache-mb N       CPU KV-cache pool size (default 256)\n"
"  --kv-fraction F       GPU: share of free memory for KV (default 0.9)\n"
"  --kv-block-size N     tokens per KV-cache block (default 16)\n"
"  --dtype T             GPU weights/KV: bfloat16, float16 or float32\n"
"                        (default: config.json's torch_dtype)\n"
"  --served-model-name S name reported to clients (default: DIR's name)\n"
"  --chat-template NAME  chat template family: chatml, qwen3, llama2,\n"
"                        llama3, llama3.1, glm4 (default: recognised\n"
"                        from tokenizer_config.json)\n"
"  --socket-mode OCTAL   socket file permissions (default 0666)\n"
"  --overlap-steps M     on, off or auto: build and begin the next step\n"
"                        while the device runs the last one (default\n"
"                        auto: on with an engine that runs steps\n"
"                        asynchronously, the CUDA one)\n"
"  --step-delay-us N     throttle: sleep after every step (tests)\n"
"  --pid-file PATH       write the supervisor's pid\n"
"  --no-supervise        run the server in this process, no restarts\n"
"  --help\n");
}


static int
parse_int(const char *s, const char *name, long lo, long hi)
{
    char  *end;
    long   v;

    errno = 0;
    v = strtol(s, &end, 0);
    if (errno || *end || v < lo || v > hi) {
        fprintf(stderr, "gpu_backend: %s must be an integer in %ld..%ld\n",
                name, lo, hi);
        exit(2);
    }
    return (int) v;
}


static void
parse_options(int argc, char **argv, options_t *o)
{
    int  c;

    static const struct option  longopts[] = {
        { "model", required_argument, NULL, 'm' },
        { "socket", required_argument, NULL, 's' },
        { "device", required_argument, NULL, 'd' },
        { "threads", required_argument, NULL, 't' },
        { "max-seqs", required_argument, NULL, 'S' },
        { "max-batch-tokens", required_argument, NULL, 'B' },
        { "batch-wait-us", required_argument, NULL, 'w' },
        { "slots", required_argument, NULL, 'q' },
        { "max-new-tokens", required_argument, NULL, 'n' },
        { "max-logprobs", required_argument, NULL, 'L' },
        { "logprobs-tokens", required_argument, NULL, 'l' },
        { "kv-cache-mb", required_argument, NULL, 'k' },
        { "kv-fraction", required_argument, NULL, 'f' },
        { "kv-block-size", required_argument, NULL, 'b' },
        { "dtype", required_argument, NULL, 'T' },
        { "served-model-name", required_argument, NULL, 'N' },
        { "chat-template", required_argument, NULL, 'C' },
        { "socket-mode", required_argument, NULL, 'M' },
        { "step-delay-us", required_argument, NULL, 'D' },
        { "overlap-steps", required_argument, NULL, 'O' },
        { "pid-file", required_argument, NULL, 'p' },
        { "no-supervise", no_argument, NULL, 'x' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    memset(o, 0, sizeof(*o));
    o->supervise = 1;
    o->slots = 256;
    o->max_logprobs = GPU_LOGPROBS_MAX;
    o->socket_mode = 0666;
    o->overlap = -1;
    o->engine.device = "auto";
    o->engine.threads = 1;
    o->engine.max_seqs = 64;
    o->engine.max_batch_tokens = 2048;
    o->engine.kv_block_size = 16;
    o->engine.kv_fraction = 0.9;
    o->engine.kv_bytes = (size_t) 256 << 20;

    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model_dir = optarg; break;
        case 's': o->socket_path = optarg; break;
        case 'd': o->engine.device = optarg; break;
        case 't':
            o->engine.threads = parse_int(optarg, "--threads", 1, 256);
            break;
        case 'S':
            o->engine.max_seqs = parse_int(optarg, "--max-seqs", 1, 4096);
            break;
        case 'B':
            o->engine.max_batch_tokens = parse_int(optarg,
                                          "--max-batch-tokens", 1, 1 << 20);
            break;
        case 'w':
            o->sched.batch_wait_us = parse_int(optarg, "--batch-wait-us", 0,
                                               10000000);
            break;
        case 'q':
            o->slots = parse_int(optarg, "--slots", 1, 65536);
            break;
        case 'n':
            o->max_new_tokens = parse_int(optarg, "--max-new-tokens", 1,
                                          1 << 20);
            break;
        case 'L':
            o->max_logprobs = parse_int(optarg, "--max-logprobs", 0,
                                        GPU_LOGPROBS_MAX);
            break;
        case 'l':
            o->logprobs_tokens = parse_int(optarg, "--logprobs-tokens", 1,
                                           1 << 20);
            break;
        case 'k':
            o->engine.kv_bytes = (size_t) parse_int(optarg, "--kv-cache-mb",
                                                    1, 1 << 22) << 20;
            break;
        case 'f':
            o->engine.kv_fraction = atof(optarg);
            if (o->engine.kv_fraction <= 0 || o->engine.kv_fraction > 1) {
                fprintf(stderr, "gpu_backend: --kv-fraction must be in "
                        "(0, 1]\n");
                exit(2);
            }
            break;
        case 'b':
            o->engine.kv_block_size = parse_int(optarg, "--kv-block-size",
                                                1, 4096);
            break;
        case 'T': o->engine.dtype = optarg; break;
        case 'N': o->served_name = optarg; break;
        case 'C': o->chat_template = optarg; break;
        case 'M':
            o->socket_mode = (int) strtol(optarg, NULL, 8);
            break;
        case 'D':
            o->sched.step_delay_us = parse_int(optarg, "--step-delay-us", 0,
                                               10000000);
            break;
        case 'O':
            if (strcmp(optarg, "on") == 0) {
                o->overlap = 1;
            } else if (strcmp(optarg, "off") == 0) {
                o->overlap = 0;
            } else if (strcmp(optarg, "auto") == 0) {
                o->overlap = -1;
            } else {
                fprintf(stderr, "gpu_backend: --overlap-steps must be on, "
                        "off or auto\n");
                exit(2);
            }
            break;
        case 'p': o->pid_file = optarg; break;
        case 'x': o->supervise = 0; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }

    if (o->model_dir == NULL || o->socket_path == NULL || optind < argc) {
        usage(stderr);
        exit(2);
    }

    o->sched.max_seqs = o->engine.max_seqs;
    o->sched.max_batch_tokens = o->engine.max_batch_tokens;
}


static void
on_stop(int sig)
{
    stop_flag = 1;
    if (child_pid > 0) {
        kill(child_pid, sig);
    }
}


static void
install_signals(void)
{
    struct sigaction  sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}


/* load everything, then serve; returns the process exit status */
static int
serve(options_t *o, int listen_fd, int ready_fd)
{
    int                    memfd, ctx, kv_tokens, max_new, tok_bytes;
    int                    lp_tokens, rc;
    char                   err[1024], path[PATH_MAX];
    model_t                model;
    engine_t              *engine;
    server_t              *srv;
    scheduler_t           *sched;
    tokenizer_t           *tok;
    chat_template_t        chat;
    gpu_channel_header_t  *h;

    if (model_load(o->model_dir, &model, err, sizeof(err)) != 0) {
        log_error("cannot load the model: %s", err);
        return EXIT_CONFIG;
    }

    /* everything below is freed at "done": a clean exit leaves nothing
     * allocated, so a leak checker sees only what requests leaked */
    rc = EXIT_CONFIG;
    memfd = -1;
    engine = NULL;
    srv = NULL;
    sched = NULL;
    h = NULL;
    memset(&chat, 0, sizeof(chat));

    snprintf(path, sizeof(path), "%s/tokenizer.json", o->model_dir);
    tok = tokenizer_load(path, err, sizeof(err));
    if (tok == NULL) {
        log_error("cannot load the tokenizer: %s", err);
        goto done;
    }

    /* config.json's eos_token_id decides; the tokenizer's only fills in */
    if (model.cfg.n_eos == 0 && tokenizer_eos_id(tok) >= 0) {
        model.cfg.eos_ids[0] = tokenizer_eos_id(tok);
        model.cfg.n_eos = 1;
    }

    if (tokenizer_vocab_size(tok) > model.cfg.vocab_size) {
        log_error("%s has %d tokens but %s/config.json says vocab_size %d",
                  path, tokenizer_vocab_size(tok), o->model_dir,
                  model.cfg.vocab_size);
        goto done;
    }

    if (chat_template_load(o->model_dir, o->chat_template, &chat, err,
                           sizeof(err)) != 0)
    {
        log_error("cannot load the chat template: %s", err);
        goto done;
    }
    chat_template_default_tokens(&chat,
                                 tokenizer_piece(tok, tokenizer_bos_id(tok)),
                                 tokenizer_piece(tok, tokenizer_eos_id(tok)));

    engine = engine_create(&model, &o->engine, err, sizeof(err));
    if (engine == NULL) {
        log_error("cannot start the engine: %s", err);
        goto done;
    }

    /* the context a request may use: the model's, or what the cache holds */
    ctx = model.cfg.max_seq_len;
    kv_tokens = engine_kv_blocks_total(engine) * engine_kv_block_size(engine);
    if (kv_tokens < ctx) {
        ctx = kv_tokens;
    }

    max_new = o->max_new_tokens ? o->max_new_tokens : ctx;
    if (max_new > ctx) {
        max_new = ctx;
    }

    tok_bytes = tokenizer_max_token_bytes(tok);

    /* logprobs records cost (16 + 8 * max_logprobs) bytes a token in
     * every slot: fewer tokens than max_new by default */
    lp_tokens = o->logprobs_tokens ? o->logprobs_tokens : 512;
    if (lp_tokens > max_new) {
        lp_tokens = max_new;
    }

    h = region_create((uint32_t) o->slots,
                      (uint32_t) ctx * 8,       /* text: ~8 bytes a token */
                      (uint32_t) ctx, (uint32_t) max_new,
                      (uint32_t) (max_new * (tok_bytes < 16 ? tok_bytes : 16)
                                  + 4 * tok_bytes + 64),
                      (uint32_t) o->max_logprobs, (uint32_t) lp_tokens,
                      (uint32_t) model.cfg.vocab_size,
                      scheduler_vocab_bytes(tok, model.cfg.vocab_size),
                      &memfd, err, sizeof(err));
    if (h == NULL) {
        log_error("cannot create the shared region: %s", err);
        goto done;
    }

    /* page-locked for the device: a copy out of it needs no staging */
    if (engine_register_host(engine, h, (size_t) h->region_size, err,
                             sizeof(err)) != 0)
    {
        log_warn("shared region not page-locked: %s", err);
    }

    h->backend_pid = (uint64_t) getpid();
    h->start_ns = (uint64_t) time(NULL) * 1000000000ull;
    h->vocab_size = (uint32_t) model.cfg.vocab_size;
    h->ctx_len = (uint32_t) ctx;
    snprintf(h->model_name, sizeof(h->model_name), "%s",
             o->served_name ? o->served_name : model.name);
    snprintf(h->engine_name, sizeof(h->engine_name), "%s",
             engine_name(engine));
    h->stats.kv_blocks_total = (uint32_t) engine_kv_blocks_total(engine);

    o->sched.overlap_steps = o->overlap >= 0 ? o->overlap
                                             : engine_runs_async(engine);
    srv = server_create(listen_fd, memfd, h);
    sched = scheduler_create(&o->sched, h, &model, tok, engine,
                             server_notify, srv);
    if (srv == NULL || sched == NULL) {
        log_error("out of memory at start");
        goto done;
    }
    server_set_scheduler(srv, sched);
    scheduler_set_chat(sched, &chat);
    snprintf(h->chat_template, sizeof(h->chat_template), "%s", chat.name);

    gpu_channel_init(h);

    /* what loading freed (the tokenizer's JSON, the weights converted)
     * goes back to the system, not kept resident for the process' life */
    malloc_trim(0);

    h->ready = 1;

    if (chat.family != CHAT_NONE) {
        log_info("chat template: %s", chat.name);
    } else {
        log_info("no known chat template: /v1/chat/completions answers 400 "
                 "(--chat-template NAME sets one)");
    }

    log_info("serving %s (%s, %d layers, dim %d, vocab %d) on %s with the "
             "%s engine; context %d, %d KV blocks of %d tokens, %d slots",
             h->model_name, model.cfg.architecture, model.cfg.n_layers,
             model.cfg.dim, model.cfg.vocab_size, o->socket_path,
             engine_name(engine), ctx, engine_kv_blocks_total(engine),
             engine_kv_block_size(engine), o->slots);

    if (ready_fd >= 0) {
        (void) !write(ready_fd, "r", 1);
        close(ready_fd);
    }

    rc = server_run(srv, &stop_flag) == 0 ? 0 : 1;

done:
    /* the scheduler ends the engine's steps in flight: engine after it;
     * the engine unregisters the region: the region after it */
    scheduler_destroy(sched);
    server_destroy(srv);
    engine_destroy(engine);
    region_destroy(h, memfd);
    chat_template_free(&chat);
    tokenizer_free(tok);
    model_free(&model);

    return rc;
}


static int
supervise(options_t *o, int listen_fd)
{
    int              status, pipefd[2], ready, delay_ms;
    char             c;
    pid_t            pid;
    ssize_t          r;
    struct timespec  ts, started, now;

    delay_ms = 50;

    for ( ;; ) {
        if (pipe(pipefd) != 0) {
            log_error("pipe: %s", strerror(errno));
            return 1;
        }

        pid = fork();
        if (pid < 0) {
            log_error("fork: %s", strerror(errno));
            return 1;
        }

        if (pid == 0) {
            close(pipefd[0]);
            child_pid = 0;
            _exit(serve(o, listen_fd, pipefd[1]));
        }

        child_pid = pid;
        close(pipefd[1]);

        clock_gettime(CLOCK_MONOTONIC, &started);

        /* one byte once the model is loaded; EOF if the child died */
        do {
            r = read(pipefd[0], &c, 1);
        } while (r < 0 && errno == EINTR);
        ready = (r == 1);
        close(pipefd[0]);

        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
            /* keep waiting: on_stop forwarded the signal */
        }
        child_pid = 0;

        if (stop_flag) {
            return 0;
        }

        if (!ready) {
            log_error("the server did not start; not restarting");
            return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
        }

        if (WIFSIGNALED(status)) {
            log_warn("the server was killed by signal %d; restarting",
                     WTERMSIG(status));
        } else {
            log_warn("the server exited with status %d; restarting",
                     WEXITSTATUS(status));
        }

        /* a server that keeps dying at once is restarted ever more slowly */
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - started.tv_sec < 2) {
            delay_ms = delay_ms * 2 > 5000 ? 5000 : delay_ms * 2;
        } else {
            delay_ms = 100;
        }

        ts.tv_sec = delay_ms / 1000;
        ts.tv_nsec = (long) (delay_ms % 1000) * 1000000;
        nanosleep(&ts, NULL);
    }
}


int
main(int argc, char **argv)
{
    int        listen_fd, rc;
    char       err[512];
    FILE      *f;
    options_t  o;

    parse_options(argc, argv, &o);
    install_signals();

    listen_fd = server_listen(o.socket_path, o.socket_mode, err,
                              sizeof(err));
    if (listen_fd < 0) {
        log_error("cannot listen: %s", err);
        return EXIT_CONFIG;
    }

    if (o.pid_file) {
        f = fopen(o.pid_file, "w");
        if (f == NULL) {
            log_error("%s: %s", o.pid_file, strerror(errno));
            return EXIT_CONFIG;
        }
        fprintf(f, "%d\n", (int) getpid());
        fclose(f);
    }

    rc = o.supervise ? supervise(&o, listen_fd) : serve(&o, listen_fd, -1);

    close(listen_fd);
    unlink(o.socket_path);
    if (o.pid_file) {
        unlink(o.pid_file);
    }

    return rc;
}
