/* Cost of a child joining a fresh cgroup v2 directory, two ways (BENCHMARKS.md,
 * "Joining a cgroup v2 at clone time"): fork + the child writes its pid to
 * cgroup.procs (what tsbridge did on v2), or clone3(CLONE_INTO_CGROUP) (what it
 * does now). Times fork..reap of 30 children; needs root and a writable cgroup2
 * mount at /sys/fs/cgroup/unified (edit `base` for another mount).
 *   gcc -O2 -o /tmp/cic bench/cgroup/clone-into-cgroup.c && /tmp/cic fork && /tmp/cic clone3
 */
#define _GNU_SOURCE
#include <linux/sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>
#include <sys/wait.h>
#include <sys/stat.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e3+t.tv_nsec/1e6;}
int main(int argc,char**argv){
  int into = argc>1 && !strcmp(argv[1],"clone3");
  const char*base="/sys/fs/cgroup/unified/s5-c3"; mkdir(base,0755);
  double tot[30];
  for(int i=0;i<30;i++){
    char d[256]; snprintf(d,sizeof d,"%s/job-%d",base,i); mkdir(d,0755);
    int cfd=open(d,O_RDONLY|O_DIRECTORY|O_CLOEXEC);
    char p[300]; snprintf(p,sizeof p,"%s/cgroup.procs",d);
    int pfd=open(p,O_WRONLY|O_CLOEXEC);
    double a=now(); pid_t pid;
    if(into){
      struct clone_args ca; memset(&ca,0,sizeof ca);
      ca.flags=CLONE_INTO_CGROUP; ca.exit_signal=SIGCHLD; ca.cgroup=cfd;
      pid=syscall(SYS_clone3,&ca,sizeof ca);
      if(pid==0){ _exit(0);} 
    } else {
      pid=fork();
      if(pid==0){ char b[32]; int n=snprintf(b,sizeof b,"%d",getpid()); if(write(pfd,b,n)<0) _exit(1); _exit(0);} 
    }
    if(pid<0){perror("clone");return 1;}
    int st; waitpid(pid,&st,0); tot[i]=now()-a;
    close(cfd); close(pfd); usleep(50000); rmdir(d);
  }
  rmdir(base);
  // median
  for(int i=0;i<30;i++)for(int j=i+1;j<30;j++)if(tot[j]<tot[i]){double t=tot[i];tot[i]=tot[j];tot[j]=t;}
  printf("%s: fork..reap ms median %.2f min %.2f max %.2f\n", into?"clone3 CLONE_INTO_CGROUP":"fork + write cgroup.procs", tot[15], tot[0], tot[29]);
}
