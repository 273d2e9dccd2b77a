/*
 * Readiness probes, run by the host through EXEC:
 *   cs-agent probe-tcp HOST PORT [TIMEOUT_MS]
 *   cs-agent probe-http PORT PATH [TIMEOUT_MS]
 * Exit 0 when ready, 1 with a one-line reason on stderr when not, 2 on usage.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_MS 1000

struct target {
	struct sockaddr_storage addr;
	socklen_t len;
	char label[300];
};

static bool set_addr(const char *host, uint16_t port, struct target *t)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)&t->addr;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&t->addr;
	memset(&t->addr, 0, sizeof t->addr);
	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons(port);
		t->len = sizeof *in4;
		return true;
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		t->len = sizeof *in6;
		return true;
	}
	return false;
}

/* Addresses, and names from /etc/hosts: no DNS in a static binary. */
static bool resolve(const char *host, uint16_t port, struct target *t)
{
	char bare[256];
	size_t n = strlen(host);
	if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof bare) {
		memcpy(bare, host + 1, n - 2);
		bare[n - 2] = 0;
		host = bare;
	}
	if (set_addr(host, port, t))
		return true;
	bool found = false;
	FILE *f = fopen("/etc/hosts", "re");
	char *line = NULL;
	size_t cap = 0;
	while (!found && f && getline(&line, &cap, f) >= 0) {
		char *hash = strchr(line, '#');
		if (hash)
			*hash = 0;
		char *save = NULL;
		char *addr = strtok_r(line, " \t\r\n", &save);
		for (char *name; addr && (name = strtok_r(NULL, " \t\r\n", &save));)
			if (strcmp(name, host) == 0 && set_addr(addr, port, t)) {
				found = true;
				break;
			}
	}
	free(line);
	if (f)
		fclose(f);
	if (!found && strcmp(host, "localhost") == 0)
		found = set_addr("127.0.0.1", port, t);
	return found;
}

static int remaining(int64_t deadline)
{
	int64_t left = deadline - now_ms();
	return left < 0 ? 0 : (int)left;
}

/* Waits for one of events on fd; false with errno ETIMEDOUT at the deadline. */
static bool wait_fd(int fd, short events, int64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = events };
	for (;;) {
		int r = poll(&p, 1, remaining(deadline));
		if (r > 0)
			return true;
		if (r == 0) {
			errno = ETIMEDOUT;
			return false;
		}
		if (errno != EINTR)
			return false;
	}
}

static int connect_to(const struct target *t, int64_t deadline, char *why, size_t whylen)
{
	int fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(why, whylen, "socket: %s", strerror(errno));
		return -1;
	}
	if (connect(fd, (const struct sockaddr *)&t->addr, t->len) == 0)
		return fd;
	int err = errno;
	if (err == EINPROGRESS) {
		socklen_t len = sizeof err;
		if (!wait_fd(fd, POLLOUT, deadline))
			err = errno;
		else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err == 0)
			return fd;
	}
	if (err == ETIMEDOUT)
		snprintf(why, whylen, "connect %s: timed out", t->label);
	else
		snprintf(why, whylen, "connect %s: %s", t->label, strerror(err));
	close(fd);
	return -1;
}

static bool parse_timeout(const char *s, int *out)
{
	uint64_t v;
	if (!parse_uint(s, 10, 3600000, &v) || v == 0)
		return false;
	*out = (int)v;
	return true;
}

static bool parse_port(const char *s, uint16_t *out)
{
	uint64_t v;
	if (!parse_uint(s, 10, 65535, &v) || v == 0)
		return false;
	*out = (uint16_t)v;
	return true;
}

int probe_tcp_main(int argc, char **argv)
{
	uint16_t port;
	int timeout = DEFAULT_TIMEOUT_MS;
	if (argc < 2 || argc > 3 || !parse_port(argv[1], &port) || (argc == 3 && !parse_timeout(argv[2], &timeout))) {
		fprintf(stderr, "usage: cs-agent probe-tcp HOST PORT [TIMEOUT_MS]\n");
		return 2;
	}
	int64_t deadline = now_ms() + timeout;
	struct target t;
	if (!resolve(argv[0], port, &t)) {
		fprintf(stderr, "probe-tcp: cannot resolve %s (an address or an /etc/hosts name is needed)\n", argv[0]);
		return 1;
	}
	snprintf(t.label, sizeof t.label, "%s:%u", argv[0], (unsigned)port);
	char why[512];
	int fd = connect_to(&t, deadline, why, sizeof why);
	if (fd < 0) {
		fprintf(stderr, "probe-tcp: %s\n", why);
		return 1;
	}
	close(fd);
	return 0;
}

int probe_http_main(int argc, char **argv)
{
	uint16_t port;
	int timeout = DEFAULT_TIMEOUT_MS;
	if (argc < 2 || argc > 3 || !parse_port(argv[0], &port) || argv[1][0] != '/' || strpbrk(argv[1], " \r\n") ||
	    strlen(argv[1]) > 2048 || (argc == 3 && !parse_timeout(argv[2], &timeout))) {
		fprintf(stderr, "usage: cs-agent probe-http PORT /PATH [TIMEOUT_MS]\n");
		return 2;
	}
	int64_t deadline = now_ms() + timeout;
	struct target t;
	set_addr("127.0.0.1", port, &t);
	snprintf(t.label, sizeof t.label, "127.0.0.1:%u", (unsigned)port);
	char why[512];
	int fd = connect_to(&t, deadline, why, sizeof why);
	if (fd < 0) {
		fprintf(stderr, "probe-http: %s\n", why);
		return 1;
	}

	char req[2300];
	int len = snprintf(req, sizeof req,
			   "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%u\r\nUser-Agent: " AGENT_NAME "\r\nAccept: */*\r\n"
			   "Connection: close\r\n\r\n",
			   argv[1], (unsigned)port);
	for (int off = 0; off < len;) {
		ssize_t n = send(fd, req + off, (size_t)(len - off), MSG_NOSIGNAL);
		if (n > 0) {
			off += (int)n;
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EINTR) && wait_fd(fd, POLLOUT, deadline))
			continue;
		fprintf(stderr, "probe-http: send to %s: %s\n", t.label, strerror(errno));
		close(fd);
		return 1;
	}

	/* Only the status line matters: "HTTP/1.x NNN reason". */
	char resp[1024];
	size_t got = 0;
	while (got < sizeof resp - 1 && !memchr(resp, '\n', got)) {
		ssize_t n = recv(fd, resp + got, sizeof resp - 1 - got, 0);
		if (n > 0) {
			got += (size_t)n;
			continue;
		}
		if (n == 0)
			break;
		if ((errno == EAGAIN || errno == EINTR) && wait_fd(fd, POLLIN, deadline))
			continue;
		fprintf(stderr, "probe-http: GET %s from %s: %s\n", argv[1], t.label,
			errno == ETIMEDOUT ? "no answer in time" : strerror(errno));
		close(fd);
		return 1;
	}
	close(fd);
	resp[got] = 0;
	char *eol = strpbrk(resp, "\r\n");
	if (eol)
		*eol = 0;
	unsigned status = 0;
	char *sp = strchr(resp, ' ');
	if (strncmp(resp, "HTTP/", 5) != 0 || !sp || sscanf(sp + 1, "%3u", &status) != 1) {
		fprintf(stderr, "probe-http: GET %s from %s: not an HTTP answer\n", argv[1], t.label);
		return 1;
	}
	if (status < 200 || status > 399) {
		fprintf(stderr, "probe-http: GET %s from %s: status %u\n", argv[1], t.label, status);
		return 1;
	}
	return 0;
}
