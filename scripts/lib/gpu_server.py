"""Start and stop ngx-gpu's programs for the scripts: find a build's (or a
packed folder's) binaries, start gpu_backend and wait until it serves,
write an nginx.conf and start nginx in front of it, read /metrics, and
stop both.

scripts/bench, soak, bench-balancer and bench-gpu import it by path:

    sys.path.insert(0, os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "lib"))
    import gpu_server

Standard library only.
"""

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MODULE = "ngx_http_gpu_module.so"


class StartError(RuntimeError):
    """a program did not start; the message says why (its log's tail)"""


def prog_name():
    return os.path.basename(sys.argv[0])


def build_dir():
    """the build folder: $NGX_GPU_BUILD (as t/run reads it) or build/"""
    return os.path.join(TOP, os.environ.get("NGX_GPU_BUILD", "build"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Programs:
    """where the programs are: a build folder (`make B=DIR build`), or
    the folder scripts/gpu/pack-device makes for the GPU machine, which
    has no nginx of its own (bin/, modules/, lib/); env is the
    environment to run them in"""

    def __init__(self, folder=None):
        folder = os.path.abspath(folder or build_dir())
        self.folder = folder
        self.packed = os.path.exists(os.path.join(folder, "bin",
                                                  "gpu_backend"))
        if self.packed:
            self.backend = os.path.join(folder, "bin", "gpu_backend")
            self.generate = os.path.join(folder, "bin", "ngx-gpu-generate")
            self.nginx = os.path.join(folder, "bin", "nginx")
            self.module = os.path.join(folder, "modules", MODULE)
            self.libdirs = [os.path.join(folder, "lib")]
            extra = [os.path.join(folder, "lib", "extra")]
        else:
            self.backend = os.path.join(folder, "gpu_backend")
            self.generate = os.path.join(folder, "ngx-gpu-generate")
            self.nginx = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
            self.module = os.path.join(folder, "nginx", MODULE)
            self.libdirs, extra = [], []
        where = folder
        if folder.startswith(TOP + os.sep):
            where = os.path.relpath(folder, TOP)
        self.where = where + (" (scripts/gpu/pack-device)" if self.packed
                              else "")
        self.libdirs += self.missing_libdirs(extra)
        self.env = dict(os.environ)
        if self.libdirs:
            self.env["LD_LIBRARY_PATH"] = ":".join(
                self.libdirs + [p for p in os.environ.get(
                    "LD_LIBRARY_PATH", "").split(":") if p])

    def missing_libdirs(self, extra):
        """folders holding the libraries ldd cannot find: the packed
        extras (pack-device packs this machine's, which the GPU machine
        has its own of), and CUDA's where it lives elsewhere than on the
        build machine"""
        missing = set()
        env = dict(os.environ, LD_LIBRARY_PATH=":".join(self.libdirs))
        for f in (self.backend, self.generate, self.nginx, self.module):
            if not os.path.exists(f):
                continue
            out = subprocess.run(["ldd", f], capture_output=True, text=True,
                                 env=env).stdout
            missing |= set(re.findall(r"^\s*(\S+) => not found", out, re.M))
        if not missing:
            return []
        roots = extra + ["/usr/local/cuda/lib64",
                         "/usr/local/cuda/targets/x86_64-linux/lib",
                         "/usr/lib/x86_64-linux-gnu"]
        roots += sorted(d for d in (os.path.join("/usr/local", x, "lib64")
                                    for x in os.listdir("/usr/local")
                                    if x.startswith("cuda"))
                        if os.path.isdir(d))
        try:
            import site
            for sp in site.getsitepackages():
                nv = os.path.join(sp, "nvidia")
                for dp, _, _ in os.walk(nv) if os.path.isdir(nv) else []:
                    if os.path.basename(dp) == "lib":
                        roots.append(dp)
        except Exception:
            pass
        dirs = []
        for lib in sorted(missing):
            for d in roots:
                if os.path.exists(os.path.join(d, lib)):
                    if d not in dirs:
                        dirs.append(d)
                    break
            else:
                print("%s: %s not found on this machine" % (prog_name(), lib),
                      file=sys.stderr, flush=True)
        return dirs


def wait_http(port, path, timeout=30):
    """until GET path answers 200"""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.05)
    raise StartError("nothing answers 200 to %s on port %d" % (path, port))


def metrics(port, host="127.0.0.1"):
    """the ngx_gpu_* samples of /metrics, {name: value}, each summed over
    its label sets (one backend: one set)"""
    c = http.client.HTTPConnection(host, port, timeout=10)
    try:
        c.request("GET", "/metrics")
        body = c.getresponse().read().decode()
    finally:
        c.close()
    out = {}
    for name, v in re.findall(r"^(ngx_gpu_\w+)(?:\{[^}]*\})? (\S+)$", body,
                              re.M):
        out[name] = out.get(name, 0) + float(v)
    return out


class Backend:
    """gpu_backend serving on run/backend.sock, its log in
    run/logs/backend.log; args are its options past --socket"""

    def __init__(self, prog, run, args, timeout=300):
        os.makedirs(os.path.join(run, "logs"), exist_ok=True)
        self.sock = os.path.join(run, "backend.sock")
        self.log = os.path.join(run, "logs", "backend.log")
        self.cmd = [prog.backend, "--socket", self.sock] + args
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT,
                env=prog.env, start_new_session=True)
        deadline = time.time() + timeout
        while not (os.path.exists(self.sock)
                   and "serving" in self.logtext()):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise StartError("the backend did not start:\n"
                                 + self.logtext()[-3000:])
            time.sleep(0.05)

    def logtext(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def server_pid(self):
        """the serving process: the supervisor's latest child (it logs
        its pid), or the one started with --no-supervise"""
        pids = re.findall(r"gpu_backend\[(\d+)\] info: serving",
                          self.logtext())
        return int(pids[-1]) if pids else self.proc.pid

    def stop(self):
        """SIGTERM, as a service manager stops it (the supervisor stops
        its server); SIGKILL to the group if that takes too long"""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()


def alive(pid):
    """pid runs: not gone, and not a zombie that its reaper (nginx's
    master is a daemon, init's child) has yet to collect"""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


NGINX_CONF = """load_module %(module)s;
worker_processes %(workers)d;
pid logs/nginx.pid;
error_log logs/error.log warn;
events { worker_connections %(connections)d; }
http {
    access_log off;
    # Debian's nginx has its temp paths under /var/lib/nginx, which the
    # GPU machine lacks and a user may not write to
    client_body_temp_path %(tmp)s/body;
    proxy_temp_path %(tmp)s/proxy;
    fastcgi_temp_path %(tmp)s/fastcgi;
    uwsgi_temp_path %(tmp)s/uwsgi;
    scgi_temp_path %(tmp)s/scgi;
    keepalive_requests 1000000;
%(http)s    server {
        listen 127.0.0.1:%(port)d backlog=%(connections)d;
%(server)s
    }
}
"""


class Nginx:
    """an nginx under run/ (run/nginx.conf, run/logs) listening on port:
    http and server are what its http{} and server{} blocks hold beside
    the common frame; ready is a path that answers 200 once it serves"""

    def __init__(self, prog, run, port, server, http="", workers=2,
                 connections=4096, ready="/health"):
        self.run = run
        self.port = port
        self.pidfile = os.path.join(run, "logs", "nginx.pid")
        os.makedirs(os.path.join(run, "logs"), exist_ok=True)
        os.makedirs(os.path.join(run, "tmp"), exist_ok=True)
        self.conf = os.path.join(run, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF % {
                "module": prog.module, "workers": workers,
                "connections": connections, "tmp": os.path.join(run, "tmp"),
                "http": http.rstrip("\n") + "\n" if http else "",
                "port": port,
                "server": server.rstrip("\n")})
        p = subprocess.run([prog.nginx, "-p", run + "/", "-c", self.conf,
                            "-e", os.path.join(run, "logs", "error.log")],
                           capture_output=True, text=True, env=prog.env)
        if p.returncode != 0:
            raise StartError("nginx did not start:\n" + p.stderr[-3000:])
        self.master = int(open(self.pidfile).read())
        try:
            wait_http(port, ready)
        except StartError:
            self.stop()
            raise

    def stop(self):
        """fast shutdown, and wait for the master to go, so that the
        next nginx may take the port and the folder"""
        try:
            os.kill(self.master, signal.SIGTERM)
        except OSError:
            return
        deadline = time.time() + 10
        while alive(self.master) and time.time() < deadline:
            time.sleep(0.01)


class Server:
    """gpu_backend and an nginx in front of it (/v1/ through gpu_pass,
    /metrics, /health), in a fresh folder run/; v1 is more for the /v1/
    location"""

    def __init__(self, prog, run, port, backend_args, workers=2,
                 connections=4096, v1="", http="", start_timeout=300):
        self.run = run
        self.port = port
        shutil.rmtree(run, ignore_errors=True)
        self.backend = Backend(prog, run, backend_args, start_timeout)
        try:
            self.nginx = Nginx(
                prog, run, port,
                "        location /v1/ { gpu_pass unix:%s;%s }\n"
                "        location = /metrics { gpu_metrics; }\n"
                "        location = /health { gpu_health; }\n" % (
                    self.backend.sock, " " + v1 if v1 else ""),
                http, workers, connections)
        except Exception:
            self.backend.stop()
            raise

    def stop(self):
        self.nginx.stop()
        self.backend.stop()
