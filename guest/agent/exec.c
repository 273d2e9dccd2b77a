/*
 * EXEC streams: starting a program (pipes, a pseudo-terminal or a detached
 * daemon), moving its stdin/stdout/stderr, timeouts, signals and EXIT.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

struct exec_spec {
	char **argv;
	char **envp;
	char *cwd;
	char *user;
	char *log;
	uint64_t timeout_ms;
	bool tty;
	unsigned short rows, cols;
	bool stdin_pipe;
	bool detach;
};

/* What a child reports through its close-on-exec pipe before it dies. */
enum child_stage { ST_SETSID = 1, ST_TTY, ST_STDIO, ST_GROUPS, ST_GID, ST_UID, ST_CHDIR, ST_EXEC };

static void free_list(char **v)
{
	if (!v)
		return;
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

static void spec_free(struct exec_spec *sp)
{
	free_list(sp->argv);
	free_list(sp->envp);
	free(sp->cwd);
	free(sp->user);
	free(sp->log);
}

static char **collect(const struct fields *f, uint8_t tag, const char **bad)
{
	size_t n = fields_count(f, tag), k = 0;
	char **v = xcalloc(n + 1, sizeof *v);
	for (size_t i = 0; i < f->n; i++) {
		if (f->v[i].tag != tag)
			continue;
		if (!(v[k] = field_str(&f->v[i]))) {
			*bad = "a NUL byte";
			return v;
		}
		k++;
	}
	return v;
}

static bool parse_tty(const struct field *fl, unsigned short *rows, unsigned short *cols)
{
	char tmp[32];
	uint64_t r, c;
	if (fl->len == 0 || fl->len >= sizeof tmp)
		return false;
	memcpy(tmp, fl->val, fl->len);
	tmp[fl->len] = 0;
	char *x = strchr(tmp, 'x');
	if (!x)
		return false;
	*x = 0;
	if (!parse_uint(tmp, 10, 65535, &r) || !parse_uint(x + 1, 10, 65535, &c))
		return false;
	*rows = (unsigned short)r;
	*cols = (unsigned short)c;
	return true;
}

static char *optional_str(const struct fields *f, uint8_t tag, bool *bad)
{
	const struct field *fl = fields_first(f, tag);
	if (!fl)
		return NULL;
	char *s = field_str(fl);
	if (!s)
		*bad = true;
	return s;
}

/* Fills sp from the request; on a malformed request returns false and why. */
static bool spec_parse(const struct fields *f, struct exec_spec *sp, char *why, size_t whylen)
{
	const char *bad = NULL;
	bool nul = false;
	sp->argv = collect(f, T_ARG, &bad);
	sp->envp = collect(f, T_ENV, &bad);
	if (bad) {
		snprintf(why, whylen, "EXEC: ARG and ENV must not contain %s", bad);
		return false;
	}
	if (!sp->argv[0]) {
		snprintf(why, whylen, "EXEC needs at least one ARG");
		return false;
	}
	sp->cwd = optional_str(f, T_CWD, &nul);
	sp->user = optional_str(f, T_USER, &nul);
	sp->log = optional_str(f, T_LOG, &nul);
	if (nul) {
		snprintf(why, whylen, "EXEC: CWD, USER and LOG must not contain a NUL byte");
		return false;
	}
	if (!sp->cwd)
		sp->cwd = xstrdup("/");
	const struct field *fl = fields_first(f, T_TIMEOUT_MS);
	if (fl && !field_uint(fl, 10, UINT32_MAX, &sp->timeout_ms)) {
		snprintf(why, whylen, "EXEC: TIMEOUT_MS must be a number of milliseconds");
		return false;
	}
	if ((fl = fields_first(f, T_TTY))) {
		if (!parse_tty(fl, &sp->rows, &sp->cols)) {
			snprintf(why, whylen, "EXEC: TTY must be ROWSxCOLS, e.g. 24x80");
			return false;
		}
		sp->tty = true;
	}
	sp->stdin_pipe = field_is_one(f, T_STDIN);
	sp->detach = field_is_one(f, T_DETACH);
	if (sp->detach && (sp->tty || sp->stdin_pipe)) {
		snprintf(why, whylen, "EXEC: DETACH cannot be combined with TTY or STDIN");
		return false;
	}
	return true;
}

/* The child ---------------------------------------------------------------- */

static void __attribute__((noreturn)) child_fail(int errfd, int stage, int err)
{
	int msg[2] = { stage, err };
	ssize_t ignored = write(errfd, msg, sizeof msg);
	(void)ignored;
	_exit(127);
}

static void reset_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sigemptyset(&sa.sa_mask);
	for (int sig = 1; sig < NSIG; sig++)
		sigaction(sig, &sa, NULL); /* fails harmlessly for SIGKILL, SIGSTOP and libc's own */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

static void close_other_fds(int keep)
{
#ifdef SYS_close_range
	/* keep is at least 3: descriptors 0-2 always exist in the agent. */
	if ((keep == 3 || syscall(SYS_close_range, 3u, (unsigned)keep - 1u, 0u) == 0) &&
	    syscall(SYS_close_range, (unsigned)keep + 1u, ~0u, 0u) == 0)
		return;
#endif
	long max = sysconf(_SC_OPEN_MAX);
	if (max < 0 || max > 65536)
		max = 65536;
	for (int fd = 3; fd < max; fd++)
		if (fd != keep)
			close(fd);
}

static const char *env_get(char **envp, const char *name)
{
	size_t n = strlen(name);
	for (char **e = envp; *e; e++)
		if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
			return *e + n + 1;
	return NULL;
}

/* execvpe() with PATH taken from the child's own environment. Returns with
 * errno set when nothing could be executed. */
static void exec_search(char **argv, char **envp)
{
	const char *file = argv[0];
	if (!*file) {
		errno = ENOENT;
		return;
	}
	if (strchr(file, '/')) {
		execve(file, argv, envp);
		return;
	}
	const char *path = env_get(envp, "PATH");
	if (!path)
		path = DEFAULT_PATH;
	size_t flen = strlen(file);
	char *full = xmalloc(strlen(path) + flen + 2);
	bool denied = false;
	for (const char *p = path;; p++) {
		const char *end = strchrnul(p, ':');
		size_t dlen = (size_t)(end - p);
		if (dlen == 0) {
			memcpy(full, file, flen + 1);
		} else {
			memcpy(full, p, dlen);
			full[dlen] = '/';
			memcpy(full + dlen + 1, file, flen + 1);
		}
		execve(full, argv, envp);
		switch (errno) {
		case EACCES:
			denied = true;
			break;
		case ENOENT:
		case ENOTDIR:
		case ESTALE:
		case ENODEV:
		case ETIMEDOUT:
		case ELOOP:
		case ENAMETOOLONG:
			break;
		default:
			return;
		}
		if (!*end)
			break;
		p = end;
	}
	errno = denied ? EACCES : ENOENT;
}

static void __attribute__((noreturn)) child_main(const struct exec_spec *sp, const struct user_ids *ids, int fd0, int fd1,
						 int fd2, bool ctty, int errfd)
{
	if (setsid() < 0)
		child_fail(errfd, ST_SETSID, errno);
	reset_signals();
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != agent_nofile_soft) {
		rl.rlim_cur = agent_nofile_soft;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (ctty && ioctl(fd0, TIOCSCTTY, 0) < 0)
		child_fail(errfd, ST_TTY, errno);
	if (dup2(fd0, 0) < 0 || dup2(fd1, 1) < 0 || dup2(fd2, 2) < 0)
		child_fail(errfd, ST_STDIO, errno);
	if (ids) {
		if (setgroups(ids->ngroups, ids->groups) < 0)
			child_fail(errfd, ST_GROUPS, errno);
		if (setgid(ids->gid) < 0)
			child_fail(errfd, ST_GID, errno);
		if (setuid(ids->uid) < 0)
			child_fail(errfd, ST_UID, errno);
	}
	if (chdir(sp->cwd) < 0)
		child_fail(errfd, ST_CHDIR, errno);
	close_other_fds(errfd);
	exec_search(sp->argv, sp->envp);
	child_fail(errfd, ST_EXEC, errno);
}

/* The parent ---------------------------------------------------------------- */

static int open_pty(unsigned short rows, unsigned short cols, int *slave)
{
	int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (master < 0)
		return -1;
	struct winsize ws = { .ws_row = rows, .ws_col = cols };
	if (grantpt(master) < 0 || unlockpt(master) < 0 || ioctl(master, TIOCSWINSZ, &ws) < 0)
		goto fail;
	*slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (*slave < 0) {
		char name[64];
		if (ptsname_r(master, name, sizeof name) != 0)
			goto fail;
		*slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (*slave < 0)
			goto fail;
	}
	set_nonblock(master, true);
	return master;
fail:;
	int saved = errno;
	close(master);
	errno = saved;
	return -1;
}

static int open_log(const char *path, const struct user_ids *ids)
{
	if (!path)
		return open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (make_parents(path, ids ? (long long)ids->uid : -1, ids ? (long long)ids->gid : -1) < 0)
		return -1;
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
	if (fd >= 0 && ids) {
		struct stat st;
		/* A log the daemon's user can rotate or truncate; only a new one is chowned. */
		if (fstat(fd, &st) == 0 && st.st_size == 0 && st.st_uid == 0)
			if (fchown(fd, ids->uid, ids->gid) < 0) {
				/* not fatal: the descriptor is already open for appending */
			}
	}
	return fd;
}

static void report_child_failure(uint32_t id, const struct exec_spec *sp, const struct user_ids *ids, int stage, int err)
{
	switch (stage) {
	case ST_EXEC:
		send_error(id, err, "exec %s: %s", sp->argv[0], strerror(err));
		break;
	case ST_CHDIR:
		send_error(id, err, "chdir %s: %s", sp->cwd, strerror(err));
		break;
	case ST_GROUPS:
	case ST_GID:
	case ST_UID:
		send_error(id, err, "switch to user %s (uid %u, gid %u): %s", sp->user, (unsigned)ids->uid,
			   (unsigned)ids->gid, strerror(err));
		break;
	case ST_TTY:
		send_error(id, err, "set up the terminal: %s", strerror(err));
		break;
	default:
		send_error(id, err, "start %s: %s", sp->argv[0], strerror(err));
		break;
	}
}

static void close_if(int fd)
{
	if (fd >= 0)
		close(fd);
}

void exec_request(uint32_t id, const struct fields *f)
{
	struct exec_spec sp;
	struct user_ids ids;
	bool have_ids = false;
	char why[512];
	int errp[2] = { -1, -1 };
	int in_r = -1, in_w = -1, out_r = -1, out_w = -1, err_r = -1, err_w = -1;
	int master = -1, slave = -1, logfd = -1, nullfd = -1;

	memset(&sp, 0, sizeof sp);
	memset(&ids, 0, sizeof ids);
	if (!spec_parse(f, &sp, why, sizeof why)) {
		send_error(id, EINVAL, "%s", why);
		goto done;
	}
	if (sp.user) {
		if (!user_resolve(sp.user, &ids, why, sizeof why)) {
			send_error(id, ENOENT, "%s", why);
			goto done;
		}
		have_ids = true;
	}

	if (pipe2(errp, O_CLOEXEC) < 0) {
		send_error(id, errno, "pipe: %s", strerror(errno));
		goto done;
	}
	int fd0, fd1, fd2;
	if (sp.detach) {
		nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		logfd = open_log(sp.log, have_ids ? &ids : NULL);
		if (logfd < 0) {
			send_error(id, errno, "open log %s: %s", sp.log ? sp.log : "/dev/null", strerror(errno));
			goto done;
		}
		fd0 = nullfd;
		fd1 = fd2 = logfd;
	} else if (sp.tty) {
		master = open_pty(sp.rows, sp.cols, &slave);
		if (master < 0) {
			send_error(id, errno, "open a pseudo-terminal: %s", strerror(errno));
			goto done;
		}
		fd0 = fd1 = fd2 = slave;
	} else {
		int p[2];
		if (pipe2(p, O_CLOEXEC) < 0)
			goto pipe_failed;
		out_r = p[0], out_w = p[1];
		if (pipe2(p, O_CLOEXEC) < 0)
			goto pipe_failed;
		err_r = p[0], err_w = p[1];
		if (sp.stdin_pipe) {
			if (pipe2(p, O_CLOEXEC) < 0)
				goto pipe_failed;
			in_r = p[0], in_w = p[1];
			fd0 = in_r;
		} else {
			nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
			if (nullfd < 0)
				goto pipe_failed;
			fd0 = nullfd;
		}
		fd1 = out_w;
		fd2 = err_w;
	}

	pid_t pid = fork();
	if (pid < 0) {
		send_error(id, errno, "fork: %s", strerror(errno));
		goto done;
	}
	if (pid == 0)
		child_main(&sp, have_ids ? &ids : NULL, fd0, fd1, fd2, sp.tty, errp[1]);

	close(errp[1]);
	errp[1] = -1;
	close_if(in_r), close_if(out_w), close_if(err_w), close_if(slave), close_if(nullfd), close_if(logfd);
	in_r = out_w = err_w = slave = nullfd = logfd = -1;

	int msg[2];
	ssize_t n;
	do
		n = read(errp[0], msg, sizeof msg);
	while (n < 0 && errno == EINTR);
	if (n == (ssize_t)sizeof msg) {
		/* The child exits with 127; the SIGCHLD loop reaps it. */
		report_child_failure(id, &sp, &ids, msg[0], msg[1]);
		goto done;
	}

	fb_begin();
	fb_num(T_PID, pid);
	fb_send(F_STARTED, id);
	if (sp.detach) {
		fb_begin();
		fb_num(T_CODE, 0);
		fb_send(F_EXIT, id);
		goto done;
	}

	struct stream *s = stream_new(id, S_EXEC);
	s->pid = pid;
	if (sp.timeout_ms > 0)
		s->deadline = now_ms() + (int64_t)sp.timeout_ms;
	if (sp.tty) {
		s->tty = true;
		s->pty_fd = s->out_fd = s->in_fd = master;
		master = -1;
	} else {
		set_nonblock(out_r, true);
		set_nonblock(err_r, true);
		s->out_fd = out_r;
		s->err_fd = err_r;
		out_r = err_r = -1;
		if (in_w >= 0) {
			set_nonblock(in_w, true);
			s->in_fd = in_w;
			in_w = -1;
		}
	}
	goto done;

pipe_failed:
	send_error(id, errno, "pipe: %s", strerror(errno));
done:
	close_if(errp[0]), close_if(errp[1]);
	close_if(in_r), close_if(in_w), close_if(out_r), close_if(out_w), close_if(err_r), close_if(err_w);
	close_if(master), close_if(slave), close_if(logfd), close_if(nullfd);
	spec_free(&sp);
	if (have_ids)
		user_ids_free(&ids);
}

/* Stream I/O ---------------------------------------------------------------- */

static void close_stdin(struct stream *s)
{
	buf_free(&s->inq);
	if (s->in_fd < 0)
		return;
	if (s->tty) {
		/* A terminal has no end of input: the line discipline's EOF
		 * character makes a reading program see one. */
		struct termios t;
		if (tcgetattr(s->pty_fd, &t) == 0) {
			ssize_t ignored = write(s->pty_fd, &t.c_cc[VEOF], 1);
			(void)ignored;
		}
	} else {
		close(s->in_fd);
	}
	s->in_fd = -1;
}

void exec_write(struct stream *s, bool failed)
{
	while (s->in_fd >= 0 && s->inq.len > 0) {
		ssize_t n = write(s->in_fd, s->inq.data + s->inq.head, s->inq.len);
		if (n > 0) {
			buf_consume(&s->inq, (size_t)n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		/* EPIPE, EIO: the program no longer reads its stdin. */
		buf_clear(&s->inq);
		s->in_eof = true;
		break;
	}
	if (s->in_fd >= 0 && s->inq.len == 0 && (s->in_eof || (failed && !s->tty)))
		close_stdin(s);
}

void exec_stdin(struct stream *s, const uint8_t *p, size_t n)
{
	if (s->in_fd < 0 || s->in_eof)
		return;
	if (n == 0)
		s->in_eof = true;
	else
		buf_append(&s->inq, p, n);
	exec_write(s, false);
}

void exec_signal(struct stream *s, int sig)
{
	if (s->pid > 0)
		kill(-s->pid, sig);
}

void exec_resize(struct stream *s, unsigned rows, unsigned cols)
{
	if (!s->tty)
		return;
	struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
	ioctl(s->pty_fd, TIOCSWINSZ, &ws);
}

void exec_reaped(pid_t pid, int status)
{
	struct stream *s = stream_by_pid(pid);
	if (!s)
		return;
	s->reaped = true;
	s->status = status;
	s->grace = now_ms() + EOF_GRACE_MS;
}

static void close_output(struct stream *s, int *fd)
{
	if (*fd < 0)
		return;
	if (*fd != s->pty_fd)
		close(*fd);
	*fd = -1;
}

void exec_read(struct stream *s, bool err_side)
{
	int *fd = err_side ? &s->err_fd : &s->out_fd;
	if (*fd < 0)
		return;
	ssize_t n = out_pump(*fd, err_side ? F_STDERR : F_STDOUT, s->id);
	if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)))
		return;
	/* EOF; a terminal's master reports EIO once every slave is closed. */
	close_output(s, fd);
}

/* After the grace period: what is in the pipes now, then no more. */
static void drain(struct stream *s)
{
	size_t total = 0;
	int *fds[2] = { &s->out_fd, &s->err_fd };
	for (int i = 0; i < 2; i++) {
		while (*fds[i] >= 0 && total < 4 * DATA_CHUNK) {
			ssize_t n = out_pump(*fds[i], i ? F_STDERR : F_STDOUT, s->id);
			if (n <= 0)
				break;
			total += (size_t)n;
		}
		close_output(s, fds[i]);
	}
}

void exec_tick(struct stream *s, bool backpressure, int64_t now)
{
	if (s->dead)
		return;
	if (!s->reaped && s->deadline && now >= s->deadline) {
		kill(-s->pid, SIGKILL);
		s->timed_out = true;
		s->deadline = 0;
	}
	if (!s->reaped)
		return;
	if (s->out_fd >= 0 || s->err_fd >= 0) {
		/* A background grandchild may hold the pipes open forever. While
		 * the host is not reading, the grace period does not run out. */
		if (now < s->grace || backpressure)
			return;
		drain(s);
	}
	fb_begin();
	if (WIFSIGNALED(s->status)) {
		fb_num(T_CODE, 128 + WTERMSIG(s->status));
		fb_num(T_SIGNAL, WTERMSIG(s->status));
	} else {
		fb_num(T_CODE, WEXITSTATUS(s->status));
	}
	if (s->timed_out)
		fb_str(T_TIMED_OUT, "1");
	fb_send(F_EXIT, s->id);
	s->pid = 0; /* never signal a reaped leader's reused pid */
	stream_abort(s);
}
