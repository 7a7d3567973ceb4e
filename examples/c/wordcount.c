/*
 * A WASI command for spear's WASM runtime (calling convention "wasi").
 *
 * The call's function name arrives as argv[1] and its params on stdin; what it
 * prints on stdout is the result (JSON here), what it prints on stderr goes to
 * the execution's log, and a non-zero exit status fails the call.
 *
 *   count  -> {"lines": L, "words": W, "bytes": B} for the text on stdin
 *   upper  -> the text on stdin, upper-cased
 *   save   -> writes stdin to /data/saved.txt (needs preopen_dir, writable)
 *
 * Build: `make wasm-examples` (clang --target=wasm32-wasi, lld, wasi-libc).
 * Use with artifact config {"input_format": "raw"} to pass plain text.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *read_all(FILE *in, size_t *size) {
    size_t capacity = 4096, used = 0;
    char *buffer = malloc(capacity);
    size_t got;
    while (buffer && (got = fread(buffer + used, 1, capacity - used, in)) > 0) {
        used += got;
        if (used == capacity) {
            char *bigger = realloc(buffer, capacity *= 2);
            if (!bigger) {
                free(buffer);
                buffer = NULL;
            }
            buffer = bigger;
        }
    }
    *size = used;
    return buffer;
}

static int count(const char *text, size_t size) {
    size_t lines = 0, words = 0;
    int in_word = 0;
    for (size_t i = 0; i < size; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '\n') lines++;
        if (isspace(c)) {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            words++;
        }
    }
    printf("{\"lines\": %zu, \"words\": %zu, \"bytes\": %zu}\n", lines, words, size);
    fprintf(stderr, "counted %zu words\n", words);
    return 0;
}

static int upper(const char *text, size_t size) {
    for (size_t i = 0; i < size; i++) putchar(toupper((unsigned char)text[i]));
    return 0;
}

static int save(const char *text, size_t size) {
    FILE *out = fopen("/data/saved.txt", "w");
    if (!out) {
        perror("cannot open /data/saved.txt");
        return 1;
    }
    size_t written = fwrite(text, 1, size, out);
    fclose(out);
    printf("{\"saved\": %zu}\n", written);
    return 0;
}

int main(int argc, char **argv) {
    const char *function = argc > 1 ? argv[1] : "";
    size_t size = 0;
    char *text = read_all(stdin, &size);
    if (!text) {
        fprintf(stderr, "out of memory reading stdin\n");
        return 1;
    }
    if (strcmp(function, "count") == 0) return count(text, size);
    if (strcmp(function, "upper") == 0) return upper(text, size);
    if (strcmp(function, "save") == 0) return save(text, size);
    fprintf(stderr, "unknown function '%s' (try count, upper or save)\n", function);
    return 2;
}
