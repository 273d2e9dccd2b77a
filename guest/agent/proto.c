/*
 * Frames and fields of cs-agent/1 (docs/agent-protocol.md): decoding request
 * fields, and the one queue of outgoing frames.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Fields ---------------------------------------------------------------- */

bool fields_parse(const uint8_t *p, size_t n, struct fields *out)
{
	size_t count = 0, off = 0;
	/* First pass validates and counts, so the second cannot fail. */
	while (off < n) {
		if (n - off < 5)
			return false;
		uint32_t len = get_be32(p + off + 1);
		if (len > n - off - 5)
			return false;
		off += 5 + (size_t)len;
		count++;
	}
	out->v = xcalloc(count, sizeof *out->v);
	out->n = count;
	off = 0;
	for (size_t i = 0; i < count; i++) {
		out->v[i].tag = p[off];
		out->v[i].len = get_be32(p + off + 1);
		out->v[i].val = p + off + 5;
		off += 5 + (size_t)out->v[i].len;
	}
	return true;
}

void fields_free(struct fields *f)
{
	free(f->v);
	f->v = NULL;
	f->n = 0;
}

const struct field *fields_first(const struct fields *f, uint8_t tag)
{
	for (size_t i = 0; i < f->n; i++)
		if (f->v[i].tag == tag)
			return &f->v[i];
	return NULL;
}

size_t fields_count(const struct fields *f, uint8_t tag)
{
	size_t n = 0;
	for (size_t i = 0; i < f->n; i++)
		if (f->v[i].tag == tag)
			n++;
	return n;
}

char *field_str(const struct field *fl)
{
	if (memchr(fl->val, 0, fl->len))
		return NULL;
	char *s = xmalloc((size_t)fl->len + 1);
	memcpy(s, fl->val, fl->len);
	s[fl->len] = 0;
	return s;
}

bool field_uint(const struct field *fl, int base, uint64_t max, uint64_t *out)
{
	char tmp[32];
	if (fl->len == 0 || fl->len >= sizeof tmp)
		return false;
	memcpy(tmp, fl->val, fl->len);
	tmp[fl->len] = 0;
	return parse_uint(tmp, base, max, out);
}

bool field_is_one(const struct fields *f, uint8_t tag)
{
	const struct field *fl = fields_first(f, tag);
	return fl && fl->len == 1 && fl->val[0] == '1';
}

/* The outgoing queue ------------------------------------------------------
 *
 * Frames are appended whole. `head_left` counts the bytes of the first frame
 * that are still to be written (0: the queue starts at a frame boundary), so
 * that out_purge() can drop whole frames without cutting one in the middle.
 */

static struct buf outq;
static size_t head_left;

uint8_t *out_reserve(size_t payload_len)
{
	buf_reserve(&outq, HEADER_SIZE + payload_len);
	return buf_tail(&outq);
}

void out_commit_frame(uint8_t type, uint32_t stream, size_t payload_len)
{
	uint8_t *h = buf_tail(&outq);
	put_be32(h, (uint32_t)payload_len);
	h[4] = type;
	put_be32(h + 5, stream);
	outq.len += HEADER_SIZE + payload_len;
}

void out_frame(uint8_t type, uint32_t stream, const void *payload, size_t len)
{
	uint8_t *p = out_reserve(len);
	if (len)
		memcpy(p + HEADER_SIZE, payload, len);
	out_commit_frame(type, stream, len);
}

size_t out_queued(void)
{
	return outq.len;
}

static void out_consumed(size_t n)
{
	while (n > 0) {
		if (head_left == 0)
			head_left = HEADER_SIZE + get_be32(outq.data + outq.head);
		size_t take = n < head_left ? n : head_left;
		buf_consume(&outq, take);
		head_left -= take;
		n -= take;
	}
}

int out_write(int fd)
{
	while (outq.len > 0) {
		ssize_t n = write(fd, outq.data + outq.head, outq.len);
		if (n > 0) {
			out_consumed((size_t)n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		return -1;
	}
	return 0;
}

void out_purge(void)
{
	outq.len = head_left;
	if (outq.len == 0)
		buf_clear(&outq);
}

void out_clear(void)
{
	buf_clear(&outq);
	head_left = 0;
}

ssize_t out_pump(int fd, uint8_t type, uint32_t stream)
{
	uint8_t *p = out_reserve(DATA_CHUNK);
	ssize_t n;
	do
		n = read(fd, p + HEADER_SIZE, DATA_CHUNK);
	while (n < 0 && errno == EINTR);
	if (n > 0)
		out_commit_frame(type, stream, (size_t)n);
	return n;
}

/* Building a frame of fields ------------------------------------------- */

static struct buf scratch;

void fb_begin(void)
{
	buf_clear(&scratch);
}

void fb_bytes(uint8_t tag, const void *p, size_t n)
{
	uint8_t h[5];
	h[0] = tag;
	put_be32(h + 1, (uint32_t)n);
	buf_append(&scratch, h, sizeof h);
	buf_append(&scratch, p, n);
}

void fb_str(uint8_t tag, const char *s)
{
	fb_bytes(tag, s, strlen(s));
}

void fb_num(uint8_t tag, long long v)
{
	char tmp[32];
	int n = snprintf(tmp, sizeof tmp, "%lld", v);
	fb_bytes(tag, tmp, (size_t)n);
}

void fb_send(uint8_t type, uint32_t stream)
{
	out_frame(type, stream, scratch.data + scratch.head, scratch.len);
}

void send_error(uint32_t stream, int err, const char *fmt, ...)
{
	char msg[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fb_begin();
	fb_str(T_MESSAGE, msg);
	if (err > 0)
		fb_num(T_ERRNO, err);
	fb_send(F_ERROR, stream);
}
