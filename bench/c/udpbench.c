/* udpbench.c - the benchmarks' UDP tools (bench/netlab.py builds it with gcc):
 *
 *   udpbench gen  SRC BASEPORT NPORTS DST DPORT PPS SECONDS SIZE PREFIXHEX
 *       sendmmsg load: NPORTS sockets bound to SRC:BASEPORT.., each packet SIZE bytes of
 *       UDP payload = PREFIXHEX, then a 64-bit sequence number and the CLOCK_MONOTONIC
 *       send time in ns; paced in batches to PPS for SECONDS. Prints JSON: sent, errors,
 *       seconds, achieved pps (the self-check that the generator was not the bottleneck).
 *   udpbench sink ADDR PORT SECONDS STAMPOFF
 *       recvmmsg counter; with STAMPOFF >= 0 the send time at that payload offset gives
 *       one-way latency (same clock: all namespaces share CLOCK_MONOTONIC). Stops after
 *       SECONDS or 1 s without packets once some arrived. Prints JSON with counts and
 *       latency percentiles.
 *   udpbench fwd  ADDR PORT TOADDR TOPORT SECONDS
 *       the C peer relay: recvmmsg on ADDR:PORT, sendmmsg of the same payloads to
 *       TOADDR:TOPORT. Prints JSON: forwarded.
 * IPv4 only (the benchmarks' lab is IPv4).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 32
#define MAX_SIZE 2048
#define MAX_PORTS 1024
#define MAX_SAMPLES 2000000

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static struct sockaddr_in addr_of(const char *ip, int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};

	if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", ip);
		exit(2);
	}
	return a;
}

static int bound_socket(const char *ip, int port)
{
	struct sockaddr_in a = addr_of(ip, port);
	int fd = socket(AF_INET, SOCK_DGRAM, 0), one = 1, buf = 4 << 20;

	if (fd < 0) {
		perror("socket");
		exit(1);
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		fprintf(stderr, "bind %s:%d: %s\n", ip, port, strerror(errno));
		exit(1);
	}
	return fd;
}

static int gen(char **argv)
{
	const char *src = argv[0], *prefix = argv[8];
	int base = atoi(argv[1]), nports = atoi(argv[2]), dport = atoi(argv[4]);
	double pps = atof(argv[5]), seconds = atof(argv[6]);
	int size = atoi(argv[7]), plen = strlen(prefix) / 2, fds[MAX_PORTS];
	struct sockaddr_in dst = addr_of(argv[3], dport);
	static unsigned char payload[BATCH][MAX_SIZE];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	uint64_t start, end, seq = 0, errors = 0, next;
	double interval;
	int i, p = 0;

	if (nports < 1 || nports > MAX_PORTS || size < plen + 16 || size > MAX_SIZE) {
		fprintf(stderr, "bad ports or size\n");
		return 2;
	}
	for (i = 0; i < nports; i++) {
		fds[i] = bound_socket(src, base + i);
		if (connect(fds[i], (struct sockaddr *)&dst, sizeof(dst)) < 0) {
			perror("connect");
			return 1;
		}
	}
	memset(msgs, 0, sizeof(msgs));
	for (i = 0; i < BATCH; i++) {
		for (int b = 0; b < plen; b++)
			sscanf(prefix + 2 * b, "%2hhx", &payload[i][b]);
		memset(payload[i] + plen, 0xab, size - plen);
		iov[i].iov_base = payload[i];
		iov[i].iov_len = size;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	/* Batches of up to BATCH packets, each batch sent when its time has come; at low
	 * rates the batch shrinks to one packet so the packets stay spread over time. */
	int batch = pps >= 20000 ? BATCH : pps >= 2000 ? 4 : 1;
	interval = 1e9 * batch / pps;
	start = now_ns();
	end = start + (uint64_t)(seconds * 1e9);
	next = start;
	while (1) {
		uint64_t t = now_ns();

		if (t >= end)
			break;
		if (t < next) {
			if (next - t > 50000) {
				struct timespec ts = {0, (long)(next - t - 20000)};
				nanosleep(&ts, NULL);
			}
			continue;
		}
		for (i = 0; i < batch; i++) {
			memcpy(payload[i] + plen, &seq, 8);
			seq++;
			uint64_t stamp = now_ns();
			memcpy(payload[i] + plen + 8, &stamp, 8);
		}
		int n = sendmmsg(fds[p], msgs, batch, 0);
		if (n < batch)
			errors += batch - (n < 0 ? 0 : n), seq -= batch - (n < 0 ? 0 : n);
		p = (p + 1) % nports;
		next += (uint64_t)interval;
	}
	double secs = (now_ns() - start) / 1e9;
	printf("{\"sent\": %llu, \"errors\": %llu, \"seconds\": %.6f, \"pps\": %.1f}\n", (unsigned long long)seq,
	       (unsigned long long)errors, secs, seq / secs);
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int sink(char **argv)
{
	int fd = bound_socket(argv[0], atoi(argv[1]));
	double seconds = atof(argv[2]);
	int stampoff = atoi(argv[3]);
	static unsigned char bufs[BATCH][MAX_SIZE];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	uint64_t *samples = calloc(MAX_SAMPLES, sizeof(uint64_t));
	uint64_t received = 0, bytes = 0, nsamples = 0, start = now_ns(), last = 0;
	struct pollfd pfd = {.fd = fd, .events = POLLIN};

	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = MAX_SIZE;
		memset(&msgs[i], 0, sizeof(msgs[i]));
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	printf("{\"ready\": true}\n");
	fflush(stdout);
	while (1) {
		uint64_t t = now_ns();

		if (t - start > seconds * 1e9 || (last && t - last > 1000000000ULL))
			break;
		if (poll(&pfd, 1, 100) <= 0)
			continue;
		int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			continue;
		t = now_ns();
		last = t;
		for (int i = 0; i < n; i++) {
			received++;
			bytes += msgs[i].msg_len;
			if (stampoff >= 0 && msgs[i].msg_len >= (unsigned)stampoff + 8 && nsamples < MAX_SAMPLES) {
				uint64_t sent;

				memcpy(&sent, bufs[i] + stampoff, 8);
				samples[nsamples++] = t - sent;
			}
		}
	}
	double p50 = 0, p99 = 0, p999 = 0;
	if (nsamples) {
		qsort(samples, nsamples, sizeof(uint64_t), cmp_u64);
		p50 = samples[nsamples / 2] / 1e3;
		p99 = samples[(uint64_t)(nsamples * 0.99)] / 1e3;
		p999 = samples[(uint64_t)(nsamples * 0.999)] / 1e3;
	}
	printf("{\"received\": %llu, \"bytes\": %llu, \"samples\": %llu, \"p50_us\": %.2f, \"p99_us\": %.2f, "
	       "\"p999_us\": %.2f}\n",
	       (unsigned long long)received, (unsigned long long)bytes, (unsigned long long)nsamples, p50, p99, p999);
	return 0;
}

static int fwd(char **argv)
{
	int fd = bound_socket(argv[0], atoi(argv[1]));
	struct sockaddr_in to = addr_of(argv[2], atoi(argv[3]));
	double seconds = atof(argv[4]);
	static unsigned char bufs[BATCH][MAX_SIZE];
	struct mmsghdr msgs[BATCH], out[BATCH];
	struct iovec iov[BATCH], oiov[BATCH];
	uint64_t forwarded = 0, start = now_ns();
	struct pollfd pfd = {.fd = fd, .events = POLLIN};

	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = MAX_SIZE;
		memset(&msgs[i], 0, sizeof(msgs[i]));
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
		memset(&out[i], 0, sizeof(out[i]));
		oiov[i].iov_base = bufs[i];
		out[i].msg_hdr.msg_iov = &oiov[i];
		out[i].msg_hdr.msg_iovlen = 1;
		out[i].msg_hdr.msg_name = &to;
		out[i].msg_hdr.msg_namelen = sizeof(to);
	}
	printf("{\"ready\": true}\n");
	fflush(stdout);
	while (now_ns() - start < seconds * 1e9) {
		if (poll(&pfd, 1, 100) <= 0)
			continue;
		int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			continue;
		for (int i = 0; i < n; i++)
			oiov[i].iov_len = msgs[i].msg_len;
		int s = sendmmsg(fd, out, n, 0);
		if (s > 0)
			forwarded += s;
	}
	printf("{\"forwarded\": %llu}\n", (unsigned long long)forwarded);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 11 && !strcmp(argv[1], "gen"))
		return gen(argv + 2);
	if (argc >= 6 && !strcmp(argv[1], "sink"))
		return sink(argv + 2);
	if (argc >= 7 && !strcmp(argv[1], "fwd"))
		return fwd(argv + 2);
	fprintf(stderr, "usage: see the comment at the top of udpbench.c\n");
	return 2;
}
