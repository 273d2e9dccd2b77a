/* The table of open streams. Streams end by being marked dead; the main loop
 * frees them between two polls, so no pointer held during one pass dangles. */
#define _GNU_SOURCE
#include "agent.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static struct stream **table;
static size_t count, cap;

struct stream *stream_find(uint32_t id)
{
	for (size_t i = 0; i < count; i++)
		if (!table[i]->dead && table[i]->id == id)
			return table[i];
	return NULL;
}

struct stream *stream_by_pid(pid_t pid)
{
	for (size_t i = 0; i < count; i++)
		if (table[i]->kind == S_EXEC && table[i]->pid == pid && !table[i]->reaped)
			return table[i];
	return NULL;
}

struct stream *stream_new(uint32_t id, enum stream_kind kind)
{
	if (count == cap) {
		cap = cap ? cap * 2 : 64;
		table = xrealloc(table, cap * sizeof *table);
	}
	struct stream *s = xcalloc(1, sizeof *s);
	s->id = id;
	s->kind = kind;
	s->pty_fd = s->out_fd = s->err_fd = s->in_fd = s->file_fd = -1;
	s->uid = s->gid = -1;
	table[count++] = s;
	return s;
}

size_t stream_count(void)
{
	return count;
}

struct stream *stream_at(size_t i)
{
	return table[i];
}

static void close_fd(int *fd, int pty_fd)
{
	if (*fd >= 0 && *fd != pty_fd)
		close(*fd);
	*fd = -1;
}

static void stream_close(struct stream *s)
{
	close_fd(&s->out_fd, s->pty_fd);
	close_fd(&s->err_fd, s->pty_fd);
	close_fd(&s->in_fd, s->pty_fd);
	close_fd(&s->file_fd, -1);
	close_fd(&s->pty_fd, -1);
}

void stream_abort(struct stream *s)
{
	if (s->dead)
		return;
	/* The process group outlives its leader while a member runs. */
	if (s->kind == S_EXEC && s->pid > 0)
		kill(-s->pid, SIGKILL);
	if (s->kind == S_WRITE && s->tmp)
		unlink(s->tmp);
	stream_close(s);
	s->dead = true;
}

void stream_abort_all(void)
{
	for (size_t i = 0; i < count; i++)
		stream_abort(table[i]);
}

void stream_sweep(void)
{
	size_t j = 0;
	for (size_t i = 0; i < count; i++) {
		struct stream *s = table[i];
		if (!s->dead) {
			table[j++] = s;
			continue;
		}
		stream_close(s);
		buf_free(&s->inq);
		free(s->path);
		free(s->tmp);
		free(s);
	}
	count = j;
}

size_t stdin_pending(void)
{
	size_t n = 0;
	for (size_t i = 0; i < count; i++)
		n += table[i]->inq.len;
	return n;
}
