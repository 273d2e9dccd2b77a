/*
 * cs-agent: process 1 of a cs workspace's microVM, and the guest end of the
 * cs-agent/1 protocol (docs/agent-protocol.md).
 *
 *   cs-agent                 find the virtio-serial port named cs.agent, serve it
 *   cs-agent --port PATH     serve an explicit port device
 *   cs-agent --stdio         serve stdin/stdout (tests, debugging)
 *   cs-agent probe-tcp ...   readiness probes (probe.c)
 */
#define _GNU_SOURCE
#include "agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#define PORT_NAME "cs.agent"
#define RECONNECT_MS 100

bool agent_pid1;
uint64_t agent_nofile_soft = 1024;

/* The host connection. In port mode in_fd == out_fd. */
static struct {
	int in_fd, out_fd;
	bool port_mode;
	bool connected;
	int64_t retry_at;
	/* After a protocol error on a port: drop input until the host reconnects. */
	bool discarding;
	struct buf in;
	int in_flags, out_flags;
} conn = { .in_fd = -1, .out_fd = -1 };

static int sigfd = -1;

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof line - 2)
		n = sizeof line - 2;
	line[n++] = '\n';
	ssize_t ignored = write(2, line, (size_t)n);
	(void)ignored;
}

/* Setup ------------------------------------------------------------------ */

/* Descriptors 0-2 exist, so that no pipe of ours is ever one of them. */
static void ensure_std_fds(void)
{
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0) {
			int n = open("/dev/null", O_RDWR);
			if (n >= 0 && n != fd) {
				dup2(n, fd);
				close(n);
			}
		}
}

static void setup_process(void)
{
	ensure_std_fds();
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		agent_nofile_soft = rl.rlim_cur;
		/* Streams need up to four descriptors each. */
		if (rl.rlim_cur < rl.rlim_max) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	if (agent_pid1) {
		sigaction(SIGTERM, &sa, NULL);
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGHUP, &sa, NULL);
		umask(022);
	}
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sigfd < 0) {
		logmsg("cs-agent: signalfd: %s", strerror(errno));
		if (!agent_pid1)
			exit(1);
	}
}

static void announce(void)
{
	static const char line[] = "cs-agent: ready\n";
	int fd = agent_pid1 ? open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC | O_NONBLOCK) : -1;
	ssize_t ignored = write(fd >= 0 ? fd : 2, line, sizeof line - 1);
	(void)ignored;
	if (fd >= 0)
		close(fd);
}

static bool read_small(const char *path, char *out, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, out, len - 1);
	close(fd);
	if (n < 0)
		return false;
	out[n] = 0;
	out[strcspn(out, "\r\n")] = 0;
	return true;
}

/* The virtio-serial port whose name is cs.agent, opened; -1 if none yet. */
static int open_named_port(void)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	if (!d)
		return -1;
	int fd = -1;
	for (struct dirent *e; fd < 0 && (e = readdir(d));) {
		char path[PATH_MAX], value[64];
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
		if (!read_small(path, value, sizeof value) || strcmp(value, PORT_NAME) != 0)
			continue;
		char dev[PATH_MAX];
		snprintf(dev, sizeof dev, "/dev/%s", e->d_name);
		fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
		if (fd < 0 && errno == ENOENT) {
			/* No devtmpfs: make the node from sysfs's MAJOR:MINOR. */
			unsigned maj, min;
			snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/dev", e->d_name);
			if (read_small(path, value, sizeof value) && sscanf(value, "%u:%u", &maj, &min) == 2 &&
			    mknod(dev, S_IFCHR | 0600, makedev(maj, min)) == 0)
				fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
		}
		if (fd < 0)
			logmsg("cs-agent: open %s: %s", dev, strerror(errno));
	}
	closedir(d);
	return fd;
}

/* Children ----------------------------------------------------------------- */

static void reap(void)
{
	struct signalfd_siginfo si;
	while (sigfd >= 0 && read(sigfd, &si, sizeof si) == (ssize_t)sizeof si)
		;
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid <= 0)
			break;
		exec_reaped(pid, status);
	}
}

/* Waits until no child is left or the deadline passes. */
static void reap_all_until(int64_t deadline)
{
	while (now_ms() < deadline) {
		pid_t pid = waitpid(-1, NULL, WNOHANG);
		if (pid > 0)
			continue;
		if (pid < 0 && errno == ECHILD)
			return;
		sleep_ms(20);
	}
}

/* Leaving -------------------------------------------------------------------- */

static void flush_until(int64_t deadline)
{
	while (conn.connected && out_queued() > 0 && now_ms() < deadline) {
		if (out_write(conn.out_fd) < 0)
			return;
		if (out_queued() == 0)
			return;
		struct pollfd p = { .fd = conn.out_fd, .events = POLLOUT };
		int64_t left = deadline - now_ms();
		if (poll(&p, 1, left > 0 ? (int)left : 0) < 0 && errno != EINTR)
			return;
	}
}

static void __attribute__((noreturn)) leave(int code)
{
	stream_abort_all();
	flush_until(now_ms() + 1000);
	if (conn.in_fd >= 0 && !conn.port_mode) {
		fcntl(conn.in_fd, F_SETFL, conn.in_flags);
		fcntl(conn.out_fd, F_SETFL, conn.out_flags);
	}
	exit(code);
}

/* Every file system read-only, innermost first, so none needs a fsck. */
static void remount_readonly(void)
{
	FILE *f = fopen("/proc/mounts", "re");
	if (!f)
		return;
	char **points = NULL;
	size_t n = 0;
	char *line = NULL;
	size_t cap = 0;
	while (getline(&line, &cap, f) >= 0) {
		char *save = NULL;
		if (!strtok_r(line, " ", &save))
			continue;
		char *mnt = strtok_r(NULL, " ", &save);
		if (!mnt)
			continue;
		/* Unescape \040 and friends. */
		char *w = mnt;
		for (char *r = mnt; *r; r++) {
			if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' && r[3] >= '0' && r[3] <= '7') {
				*w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
				r += 3;
			} else {
				*w++ = *r;
			}
		}
		*w = 0;
		points = xrealloc(points, (n + 1) * sizeof *points);
		points[n++] = xstrdup(mnt);
	}
	free(line);
	fclose(f);
	while (n > 0) {
		char *p = points[--n];
		mount(NULL, p, NULL, MS_REMOUNT | MS_RDONLY, NULL);
		free(p);
	}
	free(points);
}

static void __attribute__((noreturn)) power_off(void)
{
	flush_until(now_ms() + 1000);
	if (!agent_pid1)
		leave(0);
	logmsg("cs-agent: powering off");
	kill(-1, SIGTERM);
	reap_all_until(now_ms() + 3000);
	kill(-1, SIGKILL);
	reap_all_until(now_ms() + 1000);
	sync();
	remount_readonly();
	sync();
	reboot(RB_POWER_OFF);
	logmsg("cs-agent: power off: %s", strerror(errno));
	for (;;)
		pause();
}

/* Requests ------------------------------------------------------------------ */

static void do_hello(uint32_t id)
{
	/* A new host connection: the old one's processes and frames go. */
	stream_abort_all();
	out_purge();
	fb_begin();
	fb_str(T_VERSION, PROTOCOL_VERSION);
	fb_str(T_AGENT, AGENT_NAME);
	fb_num(T_UPTIME_MS, uptime_ms());
	fb_send(F_HELLO, id);
}

static void do_info(uint32_t id)
{
	char load[128] = "";
	if (read_small("/proc/loadavg", load, sizeof load)) {
		/* "0.00 0.01 0.05 1/80 123": the three averages. */
		char *p = load;
		for (int spaces = 0; *p; p++)
			if (*p == ' ' && ++spaces == 3) {
				*p = 0;
				break;
			}
	}
	fb_begin();
	fb_str(T_VERSION, PROTOCOL_VERSION);
	fb_num(T_UPTIME_MS, uptime_ms());
	fb_str(T_PID1, agent_pid1 ? "1" : "0");
	fb_str(T_LOADAVG, load);
	fb_send(F_INFO, id);
}

static void do_signal(struct stream *s, const uint8_t *p, size_t n)
{
	struct fields f;
	uint64_t sig;
	if (!fields_parse(p, n, &f))
		return;
	const struct field *fl = fields_first(&f, T_SIGNAL);
	if (fl && field_uint(fl, 10, NSIG - 1, &sig) && sig > 0)
		exec_signal(s, (int)sig);
	fields_free(&f);
}

static void do_resize(struct stream *s, const uint8_t *p, size_t n)
{
	struct fields f;
	uint64_t rows, cols;
	if (!fields_parse(p, n, &f))
		return;
	const struct field *r = fields_first(&f, T_ROWS), *c = fields_first(&f, T_COLS);
	if (r && c && field_uint(r, 10, 65535, &rows) && field_uint(c, 10, 65535, &cols))
		exec_resize(s, (unsigned)rows, (unsigned)cols);
	fields_free(&f);
}

static void handle_frame(uint8_t type, uint32_t id, const uint8_t *p, size_t n)
{
	struct stream *s = stream_find(id);

	/* Frames about a running stream. One for a stream that has just ended
	 * crossed its EXIT on the way and is dropped. */
	switch (type) {
	case F_STDIN:
		if (s && s->kind == S_EXEC)
			exec_stdin(s, p, n);
		else if (s && s->kind == S_WRITE)
			write_file_data(s, p, n);
		return;
	case F_SIGNAL:
		if (s && s->kind == S_EXEC) {
			do_signal(s, p, n);
		} else if (s) {
			/* A file transfer has no process: a signal cancels it. */
			stream_abort(s);
			send_error(id, ECANCELED, "%s %s: cancelled", s->kind == S_READ ? "read" : "write", s->path);
		}
		return;
	case F_RESIZE:
		if (s && s->kind == S_EXEC)
			do_resize(s, p, n);
		return;
	case F_HELLO:
		if (id == 0)
			do_hello(id);
		else
			send_error(id, EINVAL, "HELLO belongs on stream 0");
		return;
	default:
		break;
	}

	/* Requests: each opens a stream and gets exactly one final frame. */
	if (id == 0) {
		send_error(0, EINVAL, "frame type 0x%02x on stream 0, which carries only HELLO", type);
		return;
	}
	if (s) {
		stream_abort(s);
		send_error(id, EINVAL, "stream %u is already in use; it was aborted", id);
		return;
	}
	if (type != F_EXEC && type != F_READ_FILE && type != F_WRITE_FILE && type != F_INFO && type != F_POWEROFF) {
		send_error(id, EINVAL, "unknown request type 0x%02x", type);
		return;
	}
	size_t live = 0;
	for (size_t i = 0; i < stream_count(); i++)
		live += !stream_at(i)->dead;
	if (live >= MAX_STREAMS) {
		send_error(id, EAGAIN, "too many open streams (%u)", MAX_STREAMS);
		return;
	}
	struct fields f;
	if (!fields_parse(p, n, &f)) {
		send_error(id, EINVAL, "malformed fields in request type 0x%02x", type);
		return;
	}
	switch (type) {
	case F_EXEC:
		exec_request(id, &f);
		break;
	case F_READ_FILE:
		read_file_request(id, &f);
		break;
	case F_WRITE_FILE:
		write_file_request(id, &f);
		break;
	case F_INFO:
		do_info(id);
		break;
	case F_POWEROFF:
		fb_begin();
		fb_num(T_CODE, 0);
		fb_send(F_EXIT, id);
		fields_free(&f);
		power_off();
	}
	fields_free(&f);
}

/* The connection ----------------------------------------------------------- */

static void conn_lost(void)
{
	if (!conn.port_mode)
		leave(0);
	/* The port reads EOF while no host is connected. Streams keep running
	 * (the next HELLO ends them); frames half-sent are of no use to the
	 * next host, which starts frame-aligned. */
	conn.connected = false;
	conn.retry_at = now_ms() + RECONNECT_MS;
	conn.discarding = false;
	buf_clear(&conn.in);
	out_clear();
}

static void protocol_error(uint32_t len)
{
	send_error(0, EPROTO, "protocol error: a frame of %u bytes exceeds the limit of %u", len, MAX_PAYLOAD);
	if (!conn.port_mode)
		leave(1);
	conn.discarding = true;
	buf_clear(&conn.in);
}

static void process_input(void)
{
	while (conn.in.len >= HEADER_SIZE && !conn.discarding) {
		const uint8_t *h = conn.in.data + conn.in.head;
		uint32_t len = get_be32(h);
		if (len > MAX_PAYLOAD) {
			protocol_error(len);
			return;
		}
		if (conn.in.len < HEADER_SIZE + len)
			return;
		handle_frame(h[4], get_be32(h + 5), h + HEADER_SIZE, len);
		buf_consume(&conn.in, HEADER_SIZE + len);
	}
}

static void conn_read(void)
{
	uint8_t *p;
	buf_reserve(&conn.in, DATA_CHUNK);
	p = buf_tail(&conn.in);
	ssize_t n;
	do
		n = read(conn.in_fd, p, DATA_CHUNK);
	while (n < 0 && errno == EINTR);
	if (n > 0) {
		if (conn.discarding)
			return;
		conn.in.len += (size_t)n;
		process_input();
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return;
	conn_lost();
}

/* The loop ----------------------------------------------------------------- */

enum watch { W_SIGNAL, W_CONN_IN, W_CONN_OUT, W_OUT, W_ERR, W_IN, W_PTY, W_FILE };

static struct pollfd *pfd;
static struct stream **pstream;
static uint8_t *pwatch;
static size_t npfd, cappfd;

static void watch(int fd, short events, struct stream *s, enum watch w)
{
	if (npfd == cappfd) {
		cappfd = cappfd ? cappfd * 2 : 64;
		pfd = xrealloc(pfd, cappfd * sizeof *pfd);
		pstream = xrealloc(pstream, cappfd * sizeof *pstream);
		pwatch = xrealloc(pwatch, cappfd);
	}
	pfd[npfd] = (struct pollfd){ .fd = fd, .events = events };
	pstream[npfd] = s;
	pwatch[npfd] = (uint8_t)w;
	npfd++;
}

static void __attribute__((noreturn)) serve(void)
{
	for (;;) {
		int64_t now = now_ms();
		bool bp = out_queued() >= OUTQ_LIMIT;
		for (size_t i = 0; i < stream_count(); i++)
			if (stream_at(i)->kind == S_EXEC)
				exec_tick(stream_at(i), bp, now);
		stream_sweep();
		if (conn.connected && out_queued() > 0 && out_write(conn.out_fd) < 0)
			conn_lost();
		bp = out_queued() >= OUTQ_LIMIT;
		if (!conn.connected && now >= conn.retry_at)
			conn.connected = true; /* a read will tell */

		int64_t wake = INT64_MAX;
		npfd = 0;
		if (sigfd >= 0)
			watch(sigfd, POLLIN, NULL, W_SIGNAL);
		if (conn.connected) {
			bool want_in = stdin_pending() < STDIN_LIMIT;
			short out_ev = out_queued() > 0 ? POLLOUT : 0;
			if (conn.port_mode)
				watch(conn.in_fd, (short)((want_in ? POLLIN : 0) | out_ev), NULL, W_CONN_IN);
			else {
				if (want_in)
					watch(conn.in_fd, POLLIN, NULL, W_CONN_IN);
				watch(conn.out_fd, out_ev, NULL, W_CONN_OUT);
			}
		} else if (conn.retry_at < wake) {
			wake = conn.retry_at;
		}
		for (size_t i = 0; i < stream_count(); i++) {
			struct stream *s = stream_at(i);
			if (s->dead)
				continue;
			if (s->kind == S_READ && !bp) {
				watch(s->out_fd, POLLIN, s, W_FILE);
				continue;
			}
			if (s->kind != S_EXEC)
				continue;
			if (s->tty) {
				short ev = (short)((!bp && s->out_fd >= 0 ? POLLIN : 0) | (s->in_fd >= 0 && s->inq.len ? POLLOUT : 0));
				if (ev)
					watch(s->pty_fd, ev, s, W_PTY);
			} else {
				if (!bp && s->out_fd >= 0)
					watch(s->out_fd, POLLIN, s, W_OUT);
				if (!bp && s->err_fd >= 0)
					watch(s->err_fd, POLLIN, s, W_ERR);
				if (s->in_fd >= 0)
					watch(s->in_fd, s->inq.len ? POLLOUT : 0, s, W_IN);
			}
			if (!s->reaped && s->deadline && s->deadline < wake)
				wake = s->deadline;
			if (s->reaped && !bp && s->grace < wake)
				wake = s->grace;
		}

		int timeout = -1;
		if (wake != INT64_MAX) {
			int64_t left = wake - now_ms();
			timeout = left < 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
		}
		int r = poll(pfd, npfd, timeout);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			logmsg("cs-agent: poll: %s", strerror(errno));
			sleep_ms(10);
			continue;
		}
		if (r == 0)
			continue;

		/* Streams first: handling the connection's input may end them. */
		for (size_t i = 0; i < npfd; i++) {
			short re = pfd[i].revents;
			struct stream *s = pstream[i];
			if (!re || (s && s->dead))
				continue;
			switch ((enum watch)pwatch[i]) {
			case W_SIGNAL:
				reap();
				break;
			case W_OUT:
			case W_ERR:
				exec_read(s, pwatch[i] == W_ERR);
				break;
			case W_IN:
				exec_write(s, (re & (POLLERR | POLLHUP)) != 0);
				break;
			case W_PTY:
				if (re & POLLOUT)
					exec_write(s, false);
				if ((re & (POLLIN | POLLHUP | POLLERR)) && !bp)
					exec_read(s, false);
				else if (re & (POLLHUP | POLLERR))
					exec_write(s, true);
				break;
			case W_FILE:
				read_file_pump(s);
				break;
			default:
				break;
			}
		}
		for (size_t i = 0; i < npfd; i++) {
			short re = pfd[i].revents;
			if (!re)
				continue;
			if (pwatch[i] == W_CONN_OUT) {
				if ((re & (POLLERR | POLLHUP)) || out_write(conn.out_fd) < 0)
					conn_lost();
			} else if (pwatch[i] == W_CONN_IN) {
				if ((re & POLLOUT) && out_write(conn.out_fd) < 0) {
					conn_lost();
					continue;
				}
				if (re & (POLLIN | POLLHUP | POLLERR))
					conn_read();
			}
		}
	}
}

static void usage(FILE *to)
{
	fprintf(to, "usage: cs-agent [--stdio | --port PATH]\n"
		    "       cs-agent probe-tcp HOST PORT [TIMEOUT_MS]\n"
		    "       cs-agent probe-http PORT /PATH [TIMEOUT_MS]\n");
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "probe-tcp") == 0)
		return probe_tcp_main(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "probe-http") == 0)
		return probe_http_main(argc - 2, argv + 2);
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		usage(stdout);
		return 0;
	}
	if (argc == 2 && strcmp(argv[1], "--version") == 0) {
		printf("%s (protocol cs-agent/%s)\n", AGENT_NAME, PROTOCOL_VERSION);
		return 0;
	}

	agent_pid1 = getpid() == 1;
	if (argc == 2 && strcmp(argv[1], "--stdio") == 0) {
		setup_process();
		conn.in_fd = 0;
		conn.out_fd = 1;
		conn.in_flags = fcntl(0, F_GETFL);
		conn.out_flags = fcntl(1, F_GETFL);
		set_nonblock(0, true);
		set_nonblock(1, true);
	} else if (argc == 3 && strcmp(argv[1], "--port") == 0) {
		setup_process();
		conn.port_mode = true;
		conn.in_fd = conn.out_fd = open(argv[2], O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
		if (conn.in_fd < 0) {
			logmsg("cs-agent: open %s: %s", argv[2], strerror(errno));
			return 1;
		}
		announce();
	} else if (argc == 1) {
		setup_process();
		conn.port_mode = true;
		int64_t start = now_ms();
		bool told = false;
		while ((conn.in_fd = open_named_port()) < 0) {
			if (!told && now_ms() - start > 5000) {
				logmsg("cs-agent: still waiting for the virtio-serial port named " PORT_NAME);
				told = true;
			}
			reap();
			sleep_ms(RECONNECT_MS);
		}
		conn.out_fd = conn.in_fd;
		announce();
	} else {
		usage(stderr);
		return 2;
	}
	conn.connected = true;
	serve();
}
