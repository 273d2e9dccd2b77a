/*
 * cs-agent: the guest side of the cs-agent/1 protocol (docs/agent-protocol.md).
 *
 * One single-threaded poll() loop serves one host connection (a virtio-serial
 * port, or stdin/stdout with --stdio). Requests open streams; each stream is
 * a process, a file being read or a file being written.
 */
#ifndef CS_AGENT_H
#define CS_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define AGENT_NAME "cs-agent 0.1"
#define PROTOCOL_VERSION "1"

#define HEADER_SIZE 9u
#define MAX_PAYLOAD (1024u * 1024u)
/* Largest STDOUT/STDERR chunk the agent sends. */
#define DATA_CHUNK (64u * 1024u)
/* Children's pipes are not read while this much is queued for the host. */
#define OUTQ_LIMIT (1024u * 1024u)
/* The connection is not read while this much stdin waits for children. */
#define STDIN_LIMIT (8u * 1024u * 1024u)
/* How long EXIT waits for a child's output to reach EOF after it was reaped. */
#define EOF_GRACE_MS 500
#define MAX_STREAMS 1024
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

enum frame_type {
	F_HELLO = 0x01,
	F_EXEC = 0x02,
	F_STDIN = 0x03,
	F_STDOUT = 0x04,
	F_STDERR = 0x05,
	F_EXIT = 0x06,
	F_SIGNAL = 0x07,
	F_RESIZE = 0x08,
	F_READ_FILE = 0x09,
	F_WRITE_FILE = 0x0a,
	F_INFO = 0x0b,
	F_POWEROFF = 0x0c,
	F_STARTED = 0x10,
	F_ERROR = 0x13,
};

enum field_tag {
	T_ARG = 1,
	T_ENV = 2,
	T_CWD = 3,
	T_USER = 4,
	T_TIMEOUT_MS = 5,
	T_TTY = 6,
	T_STDIN = 7,
	T_DETACH = 8,
	T_LOG = 9,
	T_PATH = 10,
	T_MODE = 11,
	T_UID = 12,
	T_GID = 13,
	T_MKDIRS = 14,
	T_PID = 20,
	T_MESSAGE = 21,
	T_ERRNO = 22,
	T_CODE = 30,
	T_SIGNAL = 31,
	T_TIMED_OUT = 32,
	T_SIZE = 33,
	T_FILE_MODE = 34,
	T_ROWS = 40,
	T_COLS = 41,
	T_VERSION = 50,
	T_AGENT = 51,
	T_UPTIME_MS = 52,
	T_PID1 = 53,
	T_LOADAVG = 54,
};

/* util.c ---------------------------------------------------------------- */

/* A byte queue: the bytes are data[head .. head+len). */
struct buf {
	uint8_t *data;
	size_t head;
	size_t len;
	size_t cap;
};

void buf_reserve(struct buf *b, size_t n);
uint8_t *buf_tail(struct buf *b);
void buf_append(struct buf *b, const void *p, size_t n);
void buf_consume(struct buf *b, size_t n);
void buf_clear(struct buf *b);
void buf_free(struct buf *b);

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
uint32_t get_be32(const uint8_t *p);
void put_be32(uint8_t *p, uint32_t v);
int64_t now_ms(void);
int64_t uptime_ms(void);
void set_nonblock(int fd, bool on);
void sleep_ms(int ms);
bool parse_uint(const char *s, int base, uint64_t max, uint64_t *out);

/* fields.c -------------------------------------------------------------- */

struct field {
	uint8_t tag;
	uint32_t len;
	const uint8_t *val;
};

struct fields {
	struct field *v;
	size_t n;
};

bool fields_parse(const uint8_t *p, size_t n, struct fields *out);
void fields_free(struct fields *f);
const struct field *fields_first(const struct fields *f, uint8_t tag);
size_t fields_count(const struct fields *f, uint8_t tag);
/* A NUL-terminated copy, or NULL when the value holds a NUL byte. */
char *field_str(const struct field *fl);
bool field_uint(const struct field *fl, int base, uint64_t max, uint64_t *out);
bool field_is_one(const struct fields *f, uint8_t tag);

/* out.c: everything the agent sends goes through one queue of whole frames. */

uint8_t *out_reserve(size_t payload_len);
void out_commit_frame(uint8_t type, uint32_t stream, size_t payload_len);
void out_frame(uint8_t type, uint32_t stream, const void *payload, size_t len);
size_t out_queued(void);
/* Writes what it can; -1 when the connection failed. */
int out_write(int fd);
/* Drops every queued frame that has not started to go out. */
void out_purge(void);
void out_clear(void);
/* Reads one chunk of fd into a data frame: >0 bytes, 0 EOF, -1 errno. */
ssize_t out_pump(int fd, uint8_t type, uint32_t stream);

void fb_begin(void);
void fb_bytes(uint8_t tag, const void *p, size_t n);
void fb_str(uint8_t tag, const char *s);
void fb_num(uint8_t tag, long long v);
void fb_send(uint8_t type, uint32_t stream);
void send_error(uint32_t stream, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* stream.c -------------------------------------------------------------- */

enum stream_kind { S_EXEC, S_READ, S_WRITE };

struct stream {
	uint32_t id;
	enum stream_kind kind;
	bool dead;

	/* S_EXEC */
	pid_t pid;
	bool reaped;
	int status;
	bool timed_out;
	int64_t deadline;   /* 0: no timeout */
	int64_t grace;      /* when reaped: end of the wait for EOF */
	int pty_fd;         /* owned; out_fd/in_fd may alias it */
	int out_fd;
	int err_fd;
	int in_fd;
	struct buf inq;
	bool in_eof;
	bool tty;

	/* S_READ: out_fd is the file */
	uint64_t size;
	unsigned mode;

	/* S_WRITE */
	int file_fd;
	char *path;
	char *tmp;
	long long uid;
	long long gid;
};

struct stream *stream_find(uint32_t id);
struct stream *stream_by_pid(pid_t pid);
struct stream *stream_new(uint32_t id, enum stream_kind kind);
size_t stream_count(void);
struct stream *stream_at(size_t i);
/* Ends a stream without a frame: kills its processes, drops its files. */
void stream_abort(struct stream *s);
void stream_abort_all(void);
void stream_sweep(void);
size_t stdin_pending(void);

/* exec.c ---------------------------------------------------------------- */

void exec_request(uint32_t id, const struct fields *f);
void exec_stdin(struct stream *s, const uint8_t *p, size_t n);
void exec_signal(struct stream *s, int sig);
void exec_resize(struct stream *s, unsigned rows, unsigned cols);
void exec_reaped(pid_t pid, int status);
void exec_read(struct stream *s, bool err_side);
void exec_write(struct stream *s, bool failed);
void exec_tick(struct stream *s, bool backpressure, int64_t now);

/* files.c --------------------------------------------------------------- */

void read_file_request(uint32_t id, const struct fields *f);
void read_file_pump(struct stream *s);
void write_file_request(uint32_t id, const struct fields *f);
void write_file_data(struct stream *s, const uint8_t *p, size_t n);
/* mkdir -p of path's parent; created folders get uid/gid when >= 0. */
int make_parents(const char *path, long long uid, long long gid);

/* users.c --------------------------------------------------------------- */

struct user_ids {
	uid_t uid;
	gid_t gid;
	gid_t *groups;
	size_t ngroups;
};

bool user_resolve(const char *spec, struct user_ids *out, char *err, size_t errlen);
void user_ids_free(struct user_ids *ids);

/* probe.c --------------------------------------------------------------- */

int probe_tcp_main(int argc, char **argv);
int probe_http_main(int argc, char **argv);

/* main.c ---------------------------------------------------------------- */

extern bool agent_pid1;
/* The soft RLIMIT_NOFILE the agent was started with, restored in children. */
extern uint64_t agent_nofile_soft;

#endif
