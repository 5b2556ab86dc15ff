/*
 * json.c -- a small JSON reader for the live commands (status, flush): parses the
 * daemon's .pcache/status.json into a tree that the commands query by key.
 *
 * Only what status.json needs, but all of RFC 8259 that it could contain: objects, arrays,
 * strings (escapes, \u as UTF-8; surrogate pairs are joined), numbers, true/false/null.
 * Numbers keep both a double and, for non-negative integers that fit, an exact uint64_t (byte
 * counts exceed the 53 bits of a double).
 *
 * Invariants:
 *  1. Input is never trusted: depth is limited (JSON_MAX_DEPTH), every read is bounded by the
 *     terminating NUL, and any syntax error fails the whole parse (-EINVAL), freeing the tree.
 *  2. A tree node owns its string and its children; pcachectl_json_free() releases all of it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pcachectl_i.h"

#define JSON_MAX_DEPTH 32

struct parser {
	const char *p;
	int depth;
};

static void skip_ws(struct parser *ps)
{
	while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')
		ps->p++;
}

static int hex4(const char *s, unsigned int *out)
{
	unsigned int v = 0;
	int i;

	for (i = 0; i < 4; i++) {
		char c = s[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned int)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned int)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned int)(c - 'A' + 10);
		else
			return -EINVAL;
	}
	*out = v;
	return 0;
}

static size_t put_utf8(char *d, unsigned int cp)
{
	if (cp < 0x80) {
		d[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		d[0] = (char)(0xc0 | (cp >> 6));
		d[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		d[0] = (char)(0xe0 | (cp >> 12));
		d[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		d[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	d[0] = (char)(0xf0 | (cp >> 18));
	d[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	d[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	d[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* A string at ps->p (the opening quote); *out is malloc'ed. The decoded text is never longer. */
static int parse_string(struct parser *ps, char **out)
{
	const char *s = ps->p + 1, *e = s;
	char *d, *buf;

	while (*e && *e != '"') {
		if (*e == '\\' && e[1])
			e++;
		e++;
	}
	if (*e != '"')
		return -EINVAL;
	buf = d = malloc((size_t)(e - s) + 1);
	if (!buf)
		return -ENOMEM;
	while (s < e) {
		unsigned int cp, lo;

		if ((unsigned char)*s < 0x20)
			goto bad;
		if (*s != '\\') {
			*d++ = *s++;
			continue;
		}
		s++;
		switch (*s++) {
		case '"': *d++ = '"'; break;
		case '\\': *d++ = '\\'; break;
		case '/': *d++ = '/'; break;
		case 'b': *d++ = '\b'; break;
		case 'f': *d++ = '\f'; break;
		case 'n': *d++ = '\n'; break;
		case 'r': *d++ = '\r'; break;
		case 't': *d++ = '\t'; break;
		case 'u':
			/* \uXXXX is 6 input bytes, at most 3 output; a pair is 12 input, 4 output */
			if (e - s < 4 || hex4(s, &cp))
				goto bad;
			s += 4;
			if (cp >= 0xd800 && cp < 0xdc00 && e - s >= 6 && s[0] == '\\' && s[1] == 'u' &&
			    !hex4(s + 2, &lo) && lo >= 0xdc00 && lo < 0xe000) {
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				s += 6;
			}
			if (cp == 0)
				goto bad; /* would cut the C string */
			d += put_utf8(d, cp);
			break;
		default:
			goto bad;
		}
	}
	*d = '\0';
	ps->p = e + 1;
	*out = buf;
	return 0;
bad:
	free(buf);
	return -EINVAL;
}

static int parse_value(struct parser *ps, struct pcachectl_json *v);

static int add_child(struct pcachectl_json *v, struct pcachectl_json **child)
{
	if (v->n == v->cap) {
		size_t cap = v->cap ? v->cap * 2 : 8;
		struct pcachectl_json *nc = realloc(v->child, cap * sizeof(*nc));

		if (!nc)
			return -ENOMEM;
		v->child = nc;
		v->cap = cap;
	}
	*child = &v->child[v->n++];
	memset(*child, 0, sizeof(**child));
	return 0;
}

static int parse_container(struct parser *ps, struct pcachectl_json *v, char close)
{
	struct pcachectl_json *c;
	int ret;

	if (++ps->depth > JSON_MAX_DEPTH)
		return -EINVAL;
	ps->p++;
	skip_ws(ps);
	if (*ps->p == close) {
		ps->p++;
		ps->depth--;
		return 0;
	}
	for (;;) {
		ret = add_child(v, &c);
		if (ret)
			return ret;
		skip_ws(ps);
		if (close == '}') {
			if (*ps->p != '"')
				return -EINVAL;
			ret = parse_string(ps, &c->key);
			if (ret)
				return ret;
			skip_ws(ps);
			if (*ps->p++ != ':')
				return -EINVAL;
			skip_ws(ps);
		}
		ret = parse_value(ps, c);
		if (ret)
			return ret;
		skip_ws(ps);
		if (*ps->p == ',') {
			ps->p++;
			continue;
		}
		if (*ps->p != close)
			return -EINVAL;
		ps->p++;
		ps->depth--;
		return 0;
	}
}

static int parse_number(struct parser *ps, struct pcachectl_json *v)
{
	const char *s = ps->p;
	char *end;

	if (*s == '-')
		s++;
	if (*s < '0' || *s > '9')
		return -EINVAL;
	v->type = PCACHECTL_JSON_NUMBER;
	v->num = strtod(ps->p, &end);
	if (end == ps->p)
		return -EINVAL;
	if (*ps->p != '-' && strspn(ps->p, "0123456789") == (size_t)(end - ps->p)) {
		errno = 0;
		v->u64 = strtoull(ps->p, NULL, 10);
		v->is_u64 = errno == 0;
	}
	ps->p = end;
	return 0;
}

static int parse_value(struct parser *ps, struct pcachectl_json *v)
{
	static const struct { const char *word; enum pcachectl_json_type type; bool b; } words[] = {
		{ "true", PCACHECTL_JSON_BOOL, true },
		{ "false", PCACHECTL_JSON_BOOL, false },
		{ "null", PCACHECTL_JSON_NULL, false },
	};
	size_t i;

	skip_ws(ps);
	switch (*ps->p) {
	case '{':
		v->type = PCACHECTL_JSON_OBJECT;
		return parse_container(ps, v, '}');
	case '[':
		v->type = PCACHECTL_JSON_ARRAY;
		return parse_container(ps, v, ']');
	case '"':
		v->type = PCACHECTL_JSON_STRING;
		return parse_string(ps, &v->str);
	}
	for (i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		if (!strncmp(ps->p, words[i].word, strlen(words[i].word))) {
			v->type = words[i].type;
			v->b = words[i].b;
			ps->p += strlen(words[i].word);
			return 0;
		}
	return parse_number(ps, v);
}

static void json_free_members(struct pcachectl_json *v)
{
	size_t i;

	for (i = 0; i < v->n; i++)
		json_free_members(&v->child[i]);
	free(v->child);
	free(v->key);
	free(v->str);
}

void pcachectl_json_free(struct pcachectl_json *v)
{
	if (!v)
		return;
	json_free_members(v);
	free(v);
}

int pcachectl_json_parse(const char *text, struct pcachectl_json **out)
{
	struct parser ps = { .p = text, .depth = 0 };
	struct pcachectl_json *v = calloc(1, sizeof(*v));
	int ret;

	if (!v)
		return -ENOMEM;
	ret = parse_value(&ps, v);
	if (!ret) {
		skip_ws(&ps);
		if (*ps.p)
			ret = -EINVAL;
	}
	if (ret) {
		pcachectl_json_free(v);
		return ret;
	}
	*out = v;
	return 0;
}

const struct pcachectl_json *pcachectl_json_get(const struct pcachectl_json *obj, const char *key)
{
	size_t i;

	if (!obj || obj->type != PCACHECTL_JSON_OBJECT)
		return NULL;
	for (i = 0; i < obj->n; i++)
		if (!strcmp(obj->child[i].key, key))
			return &obj->child[i];
	return NULL;
}

uint64_t pcachectl_json_u64(const struct pcachectl_json *obj, const char *key, uint64_t dflt)
{
	const struct pcachectl_json *v = pcachectl_json_get(obj, key);

	return v && v->type == PCACHECTL_JSON_NUMBER && v->is_u64 ? v->u64 : dflt;
}

const char *pcachectl_json_s(const struct pcachectl_json *obj, const char *key, const char *dflt)
{
	const struct pcachectl_json *v = pcachectl_json_get(obj, key);

	return v && v->type == PCACHECTL_JSON_STRING ? v->str : dflt;
}
