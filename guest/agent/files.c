/* READ_FILE and WRITE_FILE streams. */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *path_field(uint32_t id, const struct fields *f, const char *what)
{
	const struct field *fl = fields_first(f, T_PATH);
	char *path = fl ? field_str(fl) : NULL;
	if (!path || path[0] != '/') {
		send_error(id, EINVAL, "%s needs an absolute PATH", what);
		free(path);
		return NULL;
	}
	return path;
}

void read_file_request(uint32_t id, const struct fields *f)
{
	char *path = path_field(id, f, "READ_FILE");
	if (!path)
		return;
	/* O_NONBLOCK: a FIFO must not hang the agent in open(). */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		send_error(id, errno, "read %s: %s", path, strerror(errno));
	} else if (S_ISDIR(st.st_mode)) {
		send_error(id, EISDIR, "read %s: %s", path, strerror(EISDIR));
	} else if (!S_ISREG(st.st_mode)) {
		send_error(id, EINVAL, "read %s: not a regular file", path);
	} else {
		struct stream *s = stream_new(id, S_READ);
		s->out_fd = fd;
		s->mode = st.st_mode & 07777;
		s->path = path;
		return;
	}
	if (fd >= 0)
		close(fd);
	free(path);
}

void read_file_pump(struct stream *s)
{
	ssize_t n = out_pump(s->out_fd, F_STDOUT, s->id);
	if (n > 0) {
		s->size += (uint64_t)n;
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return;
	if (n < 0) {
		send_error(s->id, errno, "read %s: %s", s->path, strerror(errno));
	} else {
		char mode[16];
		snprintf(mode, sizeof mode, "%o", s->mode);
		fb_begin();
		fb_num(T_CODE, 0);
		fb_num(T_SIZE, (long long)s->size);
		fb_str(T_FILE_MODE, mode);
		fb_send(F_EXIT, s->id);
	}
	stream_abort(s);
}

int make_parents(const char *path, long long uid, long long gid)
{
	char *p = xstrdup(path);
	char *last = strrchr(p, '/');
	int rc = 0;
	if (!last || last == p)
		goto out;
	*last = 0;
	for (char *q = p + 1;; q++) {
		bool end = *q == 0;
		if (*q != '/' && !end)
			continue;
		*q = 0;
		if (mkdir(p, 0755) == 0) {
			if ((uid >= 0 || gid >= 0) && chown(p, (uid_t)uid, (gid_t)gid) < 0) {
				rc = -1;
				break;
			}
		} else if (errno != EEXIST) {
			rc = -1;
			break;
		}
		if (end)
			break;
		*q = '/';
	}
	if (rc == 0) {
		struct stat st;
		if (stat(p, &st) < 0)
			rc = -1;
		else if (!S_ISDIR(st.st_mode)) {
			errno = ENOTDIR;
			rc = -1;
		}
	}
out:;
	int saved = errno;
	free(p);
	errno = saved;
	return rc;
}

static bool id_field(const struct fields *f, uint8_t tag, long long *out)
{
	uint64_t v;
	const struct field *fl = fields_first(f, tag);
	if (!fl)
		return true;
	if (!field_uint(fl, 10, UINT32_MAX - 1, &v))
		return false;
	*out = (long long)v;
	return true;
}

void write_file_request(uint32_t id, const struct fields *f)
{
	char *path = path_field(id, f, "WRITE_FILE");
	if (!path)
		return;
	uint64_t mode = 0644;
	long long uid = -1, gid = -1;
	const struct field *fl = fields_first(f, T_MODE);
	if ((fl && !field_uint(fl, 8, 07777, &mode)) || !id_field(f, T_UID, &uid) || !id_field(f, T_GID, &gid)) {
		send_error(id, EINVAL, "WRITE_FILE: MODE must be octal (e.g. 644), UID and GID numbers");
		free(path);
		return;
	}
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
		send_error(id, EISDIR, "write %s: %s", path, strerror(EISDIR));
		free(path);
		return;
	}
	if (field_is_one(f, T_MKDIRS) && make_parents(path, uid, gid) < 0) {
		send_error(id, errno, "write %s: create parent folders: %s", path, strerror(errno));
		free(path);
		return;
	}
	/* The new content goes to a temporary file beside the target and is
	 * renamed over it, so a reader sees the old file or the new one. */
	static unsigned counter;
	size_t dirlen = (size_t)(strrchr(path, '/') - path);
	char *tmp = xmalloc(dirlen + 64);
	int fd = -1;
	for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
		snprintf(tmp, dirlen + 64, "%.*s/.cs-agent-%d-%u.tmp", (int)dirlen, path, (int)getpid(), counter++);
		fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
		if (fd < 0 && errno != EEXIST)
			break;
	}
	if (fd < 0) {
		send_error(id, errno, "write %s: %s", path, strerror(errno));
		free(tmp);
		free(path);
		return;
	}
	struct stream *s = stream_new(id, S_WRITE);
	s->file_fd = fd;
	s->path = path;
	s->tmp = tmp;
	s->mode = (unsigned)mode;
	s->uid = uid;
	s->gid = gid;
}

static int fsync_parent(const char *path)
{
	char *dir = xstrdup(path);
	char *slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = 0;
	else
		*slash = 0;
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dir);
	if (fd < 0)
		return -1;
	int rc = fsync(fd);
	close(fd);
	return rc;
}

static void write_file_finish(struct stream *s)
{
	const char *step = "write";
	if (fchmod(s->file_fd, s->mode) < 0) {
		step = "chmod";
		goto fail;
	}
	if ((s->uid >= 0 || s->gid >= 0) && fchown(s->file_fd, (uid_t)s->uid, (gid_t)s->gid) < 0) {
		step = "chown";
		goto fail;
	}
	if (fsync(s->file_fd) < 0 || close(s->file_fd) < 0) {
		s->file_fd = -1;
		goto fail;
	}
	s->file_fd = -1;
	if (rename(s->tmp, s->path) < 0) {
		step = "rename";
		goto fail;
	}
	free(s->tmp);
	s->tmp = NULL;
	fsync_parent(s->path);
	fb_begin();
	fb_num(T_CODE, 0);
	fb_num(T_SIZE, (long long)s->size);
	fb_send(F_EXIT, s->id);
	stream_abort(s);
	return;
fail:
	send_error(s->id, errno, "%s %s: %s", step, s->path, strerror(errno));
	stream_abort(s);
}

void write_file_data(struct stream *s, const uint8_t *p, size_t n)
{
	if (n == 0) {
		write_file_finish(s);
		return;
	}
	while (n > 0) {
		ssize_t w = write(s->file_fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			send_error(s->id, errno, "write %s: %s", s->path, strerror(errno));
			stream_abort(s);
			return;
		}
		p += w;
		n -= (size_t)w;
		s->size += (uint64_t)w;
	}
}
