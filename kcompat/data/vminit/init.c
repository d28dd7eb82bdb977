/* kcompat's init for VM runs (kcompat/vm.py): PID 1 of the guest, from the initramfs.
 *
 * Built static by kcompat (gcc -static -Os; aarch64-linux-gnu-gcc for arm64) and cached.
 * It reads /kcompat.conf, a list of records "KEY\0VALUE\0..." (a fixed number of values
 * per key, see the table in vm.py), then:
 *   1. mounts /dev, /proc, /sys of the initramfs; loads the modules listed (finit_module,
 *      dependencies first, as vm.py ordered them);
 *   2. opens the virtio-serial ports kcompat.stdout, kcompat.stderr, kcompat.status;
 *   3. mounts the image's rootfs (9p, read-only) under an overlay whose upper layer is a
 *      tmpfs (nothing reaches the host's copy), the volumes (9p) and tmpfs mounts, /sys,
 *      a minimal /dev, the cgroup file systems; moves the new root onto / (the
 *      switch_root way: an initramfs cannot be pivot_root'ed);
 *   4. forks the command into a new PID namespace, where it is PID 1 as in a container:
 *      /proc mounted there, groups, gid, uid, workdir, environment, execvp with the
 *      container's PATH (runc's lookup); stdout and stderr are the two ports;
 *   5. writes the command's status (128+N for signal N) to the status port and reboots
 *      (qemu runs with -no-reboot, so the VM ends).
 * A failure before the command runs is reported as "125 MESSAGE" (126/127 when the
 * command cannot be invoked / is not found) on the status port, else the console.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int status_fd = -1, err_fd = -1;
static char **recs;
static int nrecs;
extern char **environ;

static void say(int fd, const char *fmt, va_list ap) {
    char buf[1024];
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    if (n < 0) n = 0;
    buf[n++] = '\n';
    if (fd >= 0 && write(fd, buf, n) < 0) {}
}

static void finish(int code) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d\n", code);
    if (status_fd >= 0 && write(status_fd, buf, n) < 0) {}
    sync();
    reboot(RB_AUTOBOOT);
    for (;;) pause();
}

/* A failure of init itself: the message on the status port (and the console), then end. */
static void die(int code, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int con = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (con >= 0) {
        if (write(con, "kcompat-init: ", 14) < 0 || write(con, msg, strlen(msg)) < 0 ||
            write(con, "\n", 1) < 0) {}
        close(con);
    }
    if (status_fd >= 0) {
        char buf[1100];
        int n = snprintf(buf, sizeof buf, "%d %s\n", code, msg);
        if (write(status_fd, buf, n) < 0) {}
        status_fd = -1;
    }
    finish(code);
}

static void note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    say(err_fd, fmt, ap);
    va_end(ap);
}

static void read_conf(void) {
    int fd = open("/kcompat.conf", O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(125, "open /kcompat.conf: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) die(125, "stat /kcompat.conf: %s", strerror(errno));
    char *buf = malloc(st.st_size + 1);
    if (!buf) die(125, "out of memory");
    ssize_t got = 0;
    while (got < st.st_size) {
        ssize_t n = read(fd, buf + got, st.st_size - got);
        if (n <= 0) die(125, "read /kcompat.conf: %s", strerror(errno));
        got += n;
    }
    buf[got] = 0;
    close(fd);
    int n = 0;
    for (ssize_t i = 0; i < got; i++) n += buf[i] == 0;
    recs = calloc(n + 1, sizeof *recs);
    if (!recs) die(125, "out of memory");
    for (char *p = buf; p < buf + got; p += strlen(p) + 1) recs[nrecs++] = p;
}

/* The values of the i-th record with key `key`, or NULL. */
static int arity(const char *key) {
    if (!strcmp(key, "vol") || !strcmp(key, "tmpfs")) return 3;
    return 1;
}

#define FOR_RECORDS(key, i) \
    for (int i = 0; i < nrecs; i += 1 + arity(recs[i])) \
        if (!strcmp(recs[i], key) && i + arity(key) < nrecs)

static const char *get(const char *key, const char *dflt) {
    const char *v = dflt;
    FOR_RECORDS(key, i) v = recs[i + 1];
    return v;
}

static void mkdirs(const char *path, mode_t mode) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(buf, 0755);
            *p = '/';
        }
    }
    mkdir(buf, mode);
}

static void do_mount(const char *src, const char *dst, const char *type, unsigned long flags,
                     const char *data) {
    if (mount(src, dst, type, flags, data) < 0)
        die(125, "mount %s on %s (%s%s%s): %s", src, dst, type, data ? ", " : "",
            data ? data : "", strerror(errno));
}

static double now(void);
static int verbose;
static void note(const char *fmt, ...);

static void load_modules(void) {
    FOR_RECORDS("mod", i) {
        double t = now();
        const char *path = recs[i + 1];
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) die(125, "open %s: %s", path, strerror(errno));
        long r = syscall(SYS_finit_module, fd, "", 0);
        if (r < 0 && errno == ENOSYS) { /* before Linux 3.8: init_module of the bytes */
            struct stat st;
            char *image = fstat(fd, &st) == 0 ? malloc(st.st_size) : NULL;
            if (!image || read(fd, image, st.st_size) != st.st_size)
                die(125, "read %s: %s", path, strerror(errno));
            r = syscall(SYS_init_module, image, (unsigned long)st.st_size, "");
            free(image);
        }
        if (r < 0 && errno != EEXIST)
            die(125, "load module %s: %s", path, strerror(errno));
        close(fd);
        if (verbose) note("kcompat-init: %s loaded in %.3f s", path, now() - t);
    }
}

/* The /dev node of the virtio-serial port called `name` (its sysfs name attribute). */
static int open_port(const char *name) {
    for (int tries = 0; tries < 2000; tries++) {
        DIR *d = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char path[512], got[128] = {0};
            snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            ssize_t n = read(fd, got, sizeof got - 1);
            close(fd);
            if (n > 0 && got[n - 1] == '\n') got[n - 1] = 0;
            if (n > 0 && !strcmp(got, name)) {
                snprintf(path, sizeof path, "/dev/%s", e->d_name);
                int port = -1;
                for (int w = 0; w < 500 && port < 0; w++) {  /* devtmpfs makes the node */
                    port = open(path, O_WRONLY | O_NOCTTY | O_CLOEXEC);
                    if (port < 0) usleep(2000);
                }
                closedir(d);
                if (port < 0) die(125, "open %s: %s", path, strerror(errno));
                return port;
            }
        }
        if (d) closedir(d);
        usleep(5000);
    }
    die(125, "virtio-serial port %s did not appear", name);
    return -1;
}

static void node(const char *path, mode_t mode, int major, int minor) {
    if (mknod(path, S_IFCHR | mode, makedev(major, minor)) < 0 && errno != EEXIST)
        die(125, "mknod %s: %s", path, strerror(errno));
    chmod(path, mode);
}

/* A minimal /dev, as a container runtime makes it (tmpfs; null, zero, full, random,
 * urandom, tty; a private devpts; shm; the fd symlinks). */
static void setup_dev(const char *root) {
    char p[4096];
    snprintf(p, sizeof p, "%s/dev", root);
    mkdirs(p, 0755);
    do_mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k");
    static const struct { const char *n; int maj, min; } nodes[] = {
        {"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8},
        {"urandom", 1, 9}, {"tty", 5, 0},
    };
    for (unsigned i = 0; i < sizeof nodes / sizeof *nodes; i++) {
        snprintf(p, sizeof p, "%s/dev/%s", root, nodes[i].n);
        node(p, 0666, nodes[i].maj, nodes[i].min);
    }
    snprintf(p, sizeof p, "%s/dev/pts", root);
    mkdir(p, 0755);
    do_mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620");
    snprintf(p, sizeof p, "%s/dev/ptmx", root);
    if (symlink("pts/ptmx", p) < 0) {}
    snprintf(p, sizeof p, "%s/dev/shm", root);
    mkdir(p, 01777);
    do_mount("shm", p, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k");
    static const char *links[][2] = {
        {"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
        {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
        {"/proc/kcore", "core"},
    };
    for (unsigned i = 0; i < sizeof links / sizeof *links; i++) {
        snprintf(p, sizeof p, "%s/dev/%s", root, links[i][1]);
        if (symlink(links[i][0], p) < 0) {}
    }
}

/* cgroup v2 (unified), hybrid (v1 controllers and cgroup2 at unified/) or v1, as
 * systemd lays them out. */
static void setup_cgroups(const char *root, const char *mode) {
    char base[4096], p[4096];
    snprintf(base, sizeof base, "%s/sys/fs/cgroup", root);
    const unsigned long fl = MS_NOSUID | MS_NODEV | MS_NOEXEC;
    if (!strcmp(mode, "v2")) { /* read-only, as a container runtime mounts it */
        do_mount("cgroup2", base, "cgroup2", fl | MS_RDONLY, NULL);
        return;
    }
    if (!strcmp(mode, "none")) return;
    do_mount("tmpfs", base, "tmpfs", fl, "mode=755");
    FILE *f = fopen("/proc/cgroups", "re");
    char line[256];
    int cpu = 0, cpuacct = 0, net_cls = 0, net_prio = 0;
    while (f && fgets(line, sizeof line, f)) {
        char name[64];
        int hier, num, enabled;
        if (line[0] == '#' || sscanf(line, "%63s %d %d %d", name, &hier, &num, &enabled) != 4)
            continue;
        if (!enabled) continue;
        if (!strcmp(name, "cpu")) { cpu = 1; continue; }
        if (!strcmp(name, "cpuacct")) { cpuacct = 1; continue; }
        if (!strcmp(name, "net_cls")) { net_cls = 1; continue; }
        if (!strcmp(name, "net_prio")) { net_prio = 1; continue; }
        snprintf(p, sizeof p, "%s/%s", base, name);
        mkdir(p, 0755);
        do_mount("cgroup", p, "cgroup", fl, name);
    }
    if (f) fclose(f);
    static const char *pairs[][3] = {{"cpu,cpuacct", "cpu", "cpuacct"},
                                     {"net_cls,net_prio", "net_cls", "net_prio"}};
    int have[2][2] = {{cpu, cpuacct}, {net_cls, net_prio}};
    for (int k = 0; k < 2; k++) {
        if (!have[k][0] && !have[k][1]) continue;
        const char *opts = have[k][0] && have[k][1] ? pairs[k][0] : have[k][0] ? pairs[k][1]
                                                                               : pairs[k][2];
        snprintf(p, sizeof p, "%s/%s", base, opts);
        mkdir(p, 0755);
        do_mount("cgroup", p, "cgroup", fl, opts);
        if (have[k][0] && have[k][1]) {
            for (int j = 1; j < 3; j++) {
                snprintf(p, sizeof p, "%s/%s", base, pairs[k][j]);
                if (symlink(pairs[k][0], p) < 0) {}
            }
        }
    }
    if (!strcmp(mode, "hybrid")) {
        snprintf(p, sizeof p, "%s/unified", base);
        mkdir(p, 0755);
        do_mount("cgroup2", p, "cgroup2", fl, NULL);
    }
    snprintf(p, sizeof p, "%s/systemd", base);
    mkdir(p, 0755);
    do_mount("cgroup", p, "cgroup", fl, "none,name=systemd");
    mount(NULL, base, NULL, MS_REMOUNT | MS_RDONLY | MS_BIND | fl, NULL);
}

static void write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) return; /* an image without /etc: nothing to write */
    if (write(fd, text, strlen(text)) < 0) {}
    close(fd);
}

static void lo_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP;
        ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    close(s);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The container's PID 1, after fork: /proc, credentials, workdir, exec. Reports a
 * failure on stderr and exits with docker's statuses. */
static void command(void) {
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
        note("kcompat-init: mount /proc: %s", strerror(errno));
        _exit(125);
    }
    int n = 0, ng = 0;
    FOR_RECORDS("arg", i) n++;
    char **argv = calloc(n + 1, sizeof *argv);
    int ne = 0;
    FOR_RECORDS("env", i) ne++;
    char **envp = calloc(ne + 1, sizeof *envp);
    gid_t groups[256];
    n = ne = 0;
    FOR_RECORDS("arg", i) argv[n++] = recs[i + 1];
    FOR_RECORDS("env", i) envp[ne++] = recs[i + 1];
    FOR_RECORDS("group", i) if (ng < 256) groups[ng++] = (gid_t)strtoul(recs[i + 1], NULL, 10);
    uid_t uid = strtoul(get("uid", "0"), NULL, 10);
    gid_t gid = strtoul(get("gid", "0"), NULL, 10);
    const char *workdir = get("workdir", "/");
    mkdirs(workdir, 0755); /* docker creates a missing WorkingDir */
    if (setgroups(ng, groups) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0) {
        note("kcompat-init: credentials %u:%u: %s", uid, gid, strerror(errno));
        _exit(125);
    }
    if (chdir(workdir) < 0) {
        note("kcompat-init: chdir to %s: %s", workdir, strerror(errno));
        _exit(125);
    }
    if (!argv[0]) _exit(125);
    environ = envp; /* execvp looks the command up in the container's PATH, as runc */
    execvp(argv[0], argv);
    int e = errno;
    if (e == ENOENT) {
        if (strchr(argv[0], '/'))
            note("exec \"%s\": no such file or directory", argv[0]);
        else
            note("exec: \"%s\": executable file not found in $PATH", argv[0]);
        _exit(127);
    }
    note("exec \"%s\": %s", argv[0], strerror(e));
    _exit(126);
}

int main(void) {
    double t0 = now();
    mkdir("/dev", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"); /* EBUSY if automounted */
    mkdir("/proc", 0755);
    do_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mkdir("/sys", 0755);
    do_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    read_conf();
    verbose = atoi(get("verbose", "0"));
    if (verbose) err_fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    load_modules();
    double tp = now();
    status_fd = open_port("kcompat.status");
    int out = open_port("kcompat.stdout");
    if (verbose) close(err_fd);
    err_fd = open_port("kcompat.stderr");
    if (verbose) note("kcompat-init: ports found in %.3f s", now() - tp);
    if (verbose) note("kcompat-init: modules and ports ready after %.3f s", now() - t0);

    const char *nr = "/newroot";
    char p[4096], opts[512];
    mkdir("/lower", 0755);
    snprintf(opts, sizeof opts, "trans=virtio,version=9p2000.L,msize=%s,cache=%s",
             get("msize", "262144"), get("cache", "loose"));
    do_mount("kcrootfs", "/lower", "9p", MS_RDONLY | MS_NODEV, opts);
    mkdir("/rw", 0755);
    do_mount("tmpfs", "/rw", "tmpfs", 0, "mode=0755");
    mkdir("/rw/upper", 0755);
    mkdir("/rw/work", 0755);
    mkdir(nr, 0755);
    /* the rootfs's own top directory mode and owner are the lower's */
    do_mount("overlay", nr, "overlay", 0,
             "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work");
    FOR_RECORDS("vol", i) {
        snprintf(p, sizeof p, "%s%s", nr, recs[i + 2]);
        mkdirs(p, 0755);
        int ro = !strcmp(recs[i + 3], "ro");
        snprintf(opts, sizeof opts, "trans=virtio,version=9p2000.L,msize=%s,cache=%s",
                 get("msize", "262144"), ro ? "loose" : "none");
        do_mount(recs[i + 1], p, "9p", ro ? MS_RDONLY : 0, opts);
    }
    FOR_RECORDS("tmpfs", i) {
        snprintf(p, sizeof p, "%s%s", nr, recs[i + 1]);
        mkdirs(p, 0755);
        const char *data = recs[i + 3][0] ? recs[i + 3] : NULL;
        do_mount("tmpfs", p, "tmpfs", strtoul(recs[i + 2], NULL, 10), data);
    }
    snprintf(p, sizeof p, "%s/proc", nr);
    mkdirs(p, 0555);
    snprintf(p, sizeof p, "%s/sys", nr);
    mkdirs(p, 0555);
    do_mount("sysfs", p, "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL);
    setup_cgroups(nr, get("cgroup", "v2"));
    setup_dev(nr);
    const char *hostname = get("hostname", "kcompat");
    if (sethostname(hostname, strlen(hostname)) < 0) {}
    snprintf(p, sizeof p, "%s/etc/hostname", nr);
    char text[512];
    snprintf(text, sizeof text, "%s\n", hostname);
    write_file(p, text);
    snprintf(p, sizeof p, "%s/etc/hosts", nr);
    snprintf(text, sizeof text, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost "
             "ip6-loopback\n127.0.1.1\t%s\n", hostname);
    write_file(p, text);
    lo_up();
    if (atoi(get("readonly", "0")) && mount(NULL, nr, NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
        die(125, "read-only root: %s", strerror(errno));
    /* switch_root: the new root onto /, then chroot into it */
    if (chdir(nr) < 0) die(125, "chdir %s: %s", nr, strerror(errno));
    do_mount(".", "/", NULL, MS_MOVE, NULL);
    if (chroot(".") < 0 || chdir("/") < 0) die(125, "chroot: %s", strerror(errno));

    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (in < 0) die(125, "open /dev/null: %s", strerror(errno));
    int pidns = unshare(CLONE_NEWPID) == 0; /* the command is PID 1, as in a container */
    if (!pidns) note("kcompat-init: no PID namespace (%s): the command is not PID 1",
                     strerror(errno));
    if (verbose) note("kcompat-init: root ready after %.3f s", now() - t0);
    pid_t child = fork();
    if (child < 0) die(125, "fork: %s", strerror(errno));
    if (child == 0) {
        if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err_fd, 2) < 0) _exit(125);
        err_fd = 2;
        command();
    }
    close(in);
    close(out);
    int code = 125;
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, 0);
        if (pid < 0 && errno == EINTR) continue;
        if (pid < 0) break;
        if (pid == child) {
            code = WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
            break;
        }
    }
    if (verbose) note("kcompat-init: the command ended after %.3f s: %d", now() - t0, code);
    finish(code);
    return 0;
}
