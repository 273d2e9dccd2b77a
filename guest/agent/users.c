/*
 * Users and groups from /etc/passwd and /etc/group, read directly: a static
 * binary cannot load the NSS modules that getpwnam() needs.
 */
#define _GNU_SOURCE
#include "agent.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Splits a colon-separated line in place; returns the number of fields. */
static size_t split(char *line, char **out, size_t max)
{
	size_t n = 0;
	char *p = line;
	while (n < max) {
		out[n++] = p;
		char *c = strchr(p, ':');
		if (!c)
			break;
		*c = 0;
		p = c + 1;
	}
	return n;
}

static void chomp(char *line)
{
	size_t n = strlen(line);
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = 0;
}

static bool has_member(char *list, const char *name)
{
	for (char *save = NULL, *m = strtok_r(list, ",", &save); m; m = strtok_r(NULL, ",", &save))
		if (strcmp(m, name) == 0)
			return true;
	return false;
}

static void add_group(struct user_ids *ids, gid_t gid)
{
	for (size_t i = 0; i < ids->ngroups; i++)
		if (ids->groups[i] == gid)
			return;
	ids->groups = xrealloc(ids->groups, (ids->ngroups + 1) * sizeof *ids->groups);
	ids->groups[ids->ngroups++] = gid;
}

bool user_resolve(const char *spec, struct user_ids *out, char *err, size_t errlen)
{
	uint64_t num;
	bool numeric = parse_uint(spec, 10, UINT32_MAX - 1, &num);
	char *name = NULL;
	char *line = NULL;
	size_t cap = 0;
	bool found = false;

	memset(out, 0, sizeof *out);
	FILE *f = fopen("/etc/passwd", "re");
	while (f && getline(&line, &cap, f) >= 0) {
		char *v[7];
		chomp(line);
		if (line[0] == '#' || split(line, v, 7) < 4)
			continue;
		uint64_t uid, gid;
		if (!parse_uint(v[2], 10, UINT32_MAX - 1, &uid) || !parse_uint(v[3], 10, UINT32_MAX - 1, &gid))
			continue;
		if (numeric ? uid != num : strcmp(v[0], spec) != 0)
			continue;
		out->uid = (uid_t)uid;
		out->gid = (gid_t)gid;
		name = xstrdup(v[0]);
		found = true;
		break;
	}
	if (f)
		fclose(f);

	if (!found) {
		free(line);
		if (!numeric) {
			snprintf(err, errlen, "unknown user %s (not in /etc/passwd)", spec);
			return false;
		}
		/* A uid without an account: its own number as group, no others. */
		out->uid = (uid_t)num;
		out->gid = (gid_t)num;
		add_group(out, out->gid);
		return true;
	}

	add_group(out, out->gid);
	f = fopen("/etc/group", "re");
	while (f && getline(&line, &cap, f) >= 0) {
		char *v[4];
		chomp(line);
		if (line[0] == '#' || split(line, v, 4) < 4)
			continue;
		uint64_t gid;
		if (parse_uint(v[2], 10, UINT32_MAX - 1, &gid) && has_member(v[3], name))
			add_group(out, (gid_t)gid);
	}
	if (f)
		fclose(f);
	free(line);
	free(name);
	return true;
}

void user_ids_free(struct user_ids *ids)
{
	free(ids->groups);
	ids->groups = NULL;
	ids->ngroups = 0;
}
