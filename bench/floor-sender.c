/*
 * The floor of the boot server's send path: the least a program can do to
 * put netboot DATA frames on a link. It sends the frames in FRAMES_FILE
 * (whole Ethernet frames of FRAME_SIZE bytes, prepared by
 * bench/netboot-send.ts: the very frames the server sends), over and over,
 * on an AF_PACKET socket like libpcap's, CHUNK frames per sendmmsg(2), for
 * SECONDS; paced at RATE bits per second on the wire (each frame costing its
 * bytes + 24 of FCS, preamble and gap, as lib/wire/rate.ts counts) unless
 * RATE is 0. It prints the frames it sent and its CPU seconds (user + system,
 * getrusage), nothing else.
 *
 *   floor-sender LINK FRAMES_FILE FRAME_SIZE CHUNK SECONDS RATE
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: floor-sender LINK FRAMES_FILE FRAME_SIZE CHUNK SECONDS RATE\n");
    return 2;
  }
  const char *link = argv[1];
  size_t frame_size = strtoul(argv[3], 0, 10);
  unsigned chunk = strtoul(argv[4], 0, 10);
  double seconds = strtod(argv[5], 0), rate = strtod(argv[6], 0);

  FILE *file = fopen(argv[2], "rb");
  if (!file) return perror("frames file"), 1;
  static unsigned char frames[1024 * 2048];
  size_t count = fread(frames, 1, sizeof frames, file) / frame_size;
  fclose(file);
  if (count == 0 || chunk == 0 || chunk > 1024) return fprintf(stderr, "no frames or bad chunk\n"), 1;

  int fd = socket(AF_PACKET, SOCK_RAW, 0);
  if (fd < 0) return perror("socket"), 1;
  struct sockaddr_ll address = {.sll_family = AF_PACKET, .sll_ifindex = if_nametoindex(link)};
  if (!address.sll_ifindex || bind(fd, (struct sockaddr *)&address, sizeof address) < 0) return perror(link), 1;

  static struct mmsghdr messages[1024];
  static struct iovec vectors[1024];
  double frame_seconds = rate > 0 ? (frame_size + 24) * 8 / rate : 0;
  unsigned long sent = 0;
  double start = now(), next = start;
  while (now() - start < seconds) {
    for (unsigned i = 0; i < chunk; i++) {
      vectors[i].iov_base = frames + ((sent + i) % count) * frame_size;
      vectors[i].iov_len = frame_size;
      messages[i].msg_hdr = (struct msghdr){.msg_iov = &vectors[i], .msg_iovlen = 1};
    }
    if (rate > 0) {
      double wait = next - now();
      if (wait > 0) {
        struct timespec pause = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
        nanosleep(&pause, 0);
      }
    }
    int done = sendmmsg(fd, messages, chunk, 0);
    if (done < 0) continue; /* a full send buffer: try again */
    sent += done;
    next += done * frame_seconds;
    if (next < now() - 0.001) next = now(); /* no credit for time asleep */
  }
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  double cpu = usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
  printf("%lu %.3f\n", sent, cpu);
  return 0;
}
