// tbq decode GEMM: y[M, N] = x[M, K] W^T for M <= 16 and b-bit weights (b = 2, 3, 4, 8) in the fragment layout
// written by tbq_kernels/decode_layout.py, on the tensor cores (mma.sync m16n8k16, sm_80 and up).
//
// The weights are the mma's A operand (16 output channels x 16 inputs per tile) and the tokens its n8 side, so a
// decode step with M = 1 wastes 7/8 of B rather than 15/16 of A; NB n8 blocks (one for M <= 8, two above). A warp
// computes TN = 2 neighbouring 16-row tiles at once, so each activation fragment it reads serves both. A block owns
// a group of TN tiles at a time and its warps split K between them in equal step counts; blocks are persistent (one
// per resident slot, min_blocks per SM) and walk the tile groups b, b + gridDim.x, ... Each lane keeps the loads of
// its next DEPTH 128-input steps (16-byte loads of its codes, with the steps' group scales) in flight, across tile
// groups, so the memory pipe does not drain between them. Codes become exact small integers in registers (the
// exponent trick: code | the bits of 1024.0 (fp16) or 128.0 (bf16) is 1024 + code, minus 1024 + zero point); the
// activations' B fragments are read straight from global memory, 16 bytes per lane and 32 inputs (x is small and
// stays in L1/L2; the layout permutes K inside each 32 to make a lane's inputs contiguous); products
// accumulate in fp32 and each group's scales multiply its fp32 partial sums. The warps' partial sums meet in shared
// memory. One launch per linear (two with integer activations: their per-token scales first).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

namespace {

constexpr int WARPS = 8;       // warps per block, K split between them
constexpr int KSTEP = 128;     // inputs per lane step: eight 16-wide k-tiles
constexpr int TN = 2;          // 16-row output tiles per warp
constexpr int DEPTH = 2;       // steps in flight per lane (3: more spills, slower on the H200)
constexpr size_t X_SMEM_MAX = 48 * 1024;  // x staged in shared memory up to this size (no opt-in needed)
// Blocks per SM the registers are capped for: two (16 warps an SM) where the step's registers fit in 128 a thread
// (ptxas -v: no spills), one for 8-bit codes, groups of 32, and groups of 64 with two n8 blocks.
template <int BITS, int TPG, int NB>
constexpr int min_blocks() { return BITS < 8 && (TPG == 8 || (TPG == 4 && NB == 1)) ? 2 : 1; }

template <typename T> struct Num;
template <> struct Num<__half> {
  using T2 = __half2;
  static constexpr uint32_t MAGIC = 0x64006400u;  // 1024.0 twice: (code | MAGIC) is 1024 + code for code < 1024
  static constexpr float BIAS = 1024.f;
  __device__ static __forceinline__ T2 two(float v) { return __float2half2_rn(v); }
  __device__ static __forceinline__ __half one(float v) { return __float2half_rn(v); }
  __device__ static __forceinline__ float f(__half v) { return __half2float(v); }
};
template <> struct Num<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t MAGIC = 0x43004300u;  // 128.0 twice: (code | MAGIC) is 128 + code for code < 128
  static constexpr float BIAS = 128.f;
  __device__ static __forceinline__ T2 two(float v) { return __float2bfloat162_rn(v); }
  __device__ static __forceinline__ __nv_bfloat16 one(float v) { return __float2bfloat16_rn(v); }
  __device__ static __forceinline__ float f(__nv_bfloat16 v) { return __bfloat162float(v); }
};

template <typename T2> __device__ __forceinline__ uint32_t as_u32(T2 v) { return *reinterpret_cast<uint32_t*>(&v); }
template <typename T2> __device__ __forceinline__ T2 as_t2(uint32_t v) { return *reinterpret_cast<T2*>(&v); }

template <typename T> __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Pair pr of a lane's step (pair pr % PW of word pr / PW, PW = 16 / PBITS pairs a word; b = 3: plus the third bit
// from the hi plane), minus the zero point z, as two exact integers in T2. fp16 below 8 bits: the pair's bits stay at
// their offset s inside their byte, (bits | 1024.0) is 1024 + 2^s code, and one hfma2 by 2^-s minus (2^-s 1024 + z)
// gives code - z (every step exact: powers of two and small integers). Otherwise (bf16, where 128 + 2^s code is not
// exact, and 8 bits) the pair is shifted down first and BIAS + z subtracted; 8-bit codes go through two nibbles
// and subtract z last (BIAS + z is not exact in bf16 for z > 128).
template <typename T, int BITS>
__device__ __forceinline__ uint32_t dequant_pair(const uint32_t* q, const uint32_t (&qh)[2], int pr,
                                                 typename Num<T>::T2 z) {
  using Nm = Num<T>;
  using T2 = typename Nm::T2;
  constexpr int PBITS = BITS == 3 ? 2 : BITS;
  constexpr int PW = 16 / PBITS;
  constexpr uint32_t MASK = ((1u << PBITS) - 1) * 0x00010001u;
  const int at = (pr % PW) * PBITS;  // bit offset of the pair's values in their 16-bit halves
  const uint32_t hi3 = BITS == 3 ? (qh[pr / 16] >> (pr % 16)) & 0x00010001u : 0u;
  if constexpr (BITS < 8 && std::is_same_v<T, __half>) {
    const int s = at % 8;
    const uint32_t v = ((q[pr / PW] >> (at - s)) & (MASK << s)) | (hi3 << (s + 2)) | Nm::MAGIC;
    const float down = 1.f / float(1 << s);
    return as_u32(__hfma2(as_t2<T2>(v), Nm::two(down), __hneg2(__hadd2(Nm::two(Nm::BIAS * down), z))));
  } else if constexpr (BITS == 8) {  // (16 hi + lo) - z: every step an integer below 256, exact in bf16 too
    const uint32_t v = q[pr / PW] >> at;
    const T2 bias = Nm::two(Nm::BIAS);
    const T2 lo = __hsub2(as_t2<T2>((v & 0x000F000Fu) | Nm::MAGIC), bias);
    const T2 hi = __hsub2(as_t2<T2>(((v >> 4) & 0x000F000Fu) | Nm::MAGIC), bias);
    return as_u32(__hsub2(__hfma2(hi, Nm::two(16.f), lo), z));
  } else {
    const uint32_t v = ((q[pr / PW] >> at) & MASK) | (hi3 << 2) | Nm::MAGIC;
    return as_u32(__hsub2(as_t2<T2>(v), __hadd2(Nm::two(Nm::BIAS), z)));
  }
}

struct Args {
  const void* x;         // [M, K] activations, row-major
  const uint32_t* codes; // [N/16, K_pad/128, 32, WORDS] the main plane (b bits, or the low 2 bits when b = 3)
  const uint32_t* hi;    // [N/16, K_pad/128, 32, 2] the third bit when b = 3, else unused
  const void* scales;    // [N/16, G_pad, 16] per group, rows of a tile innermost
  const void* zeros;     // [N/16, G_pad, 16] zero points (asymmetric) or nullptr (symmetric: 2^(b-1))
  void* y;               // [M, N] output, x's dtype
  float* act_scale;      // [M] per-token activation scales (act_bits > 0), written by act_scale_kernel
  int M, N, K, K_pad, group, G_pad, act_bits;
  float act_clip;
  int x_smem;            // 1: each block stages x in shared memory (M K sizeof(T) <= X_SMEM_MAX)
};

// W4A4 / W4A8: s_x[m] = clip max_k |x[m, k]| / qmax (1 for an all-zero row), in float32 as tbq_kernels.int_act does.
template <typename T>
__global__ void act_scale_kernel(const Args p) {
  __shared__ float warp_max[32];
  const T* x = static_cast<const T*>(p.x) + (size_t)blockIdx.x * p.K;
  float m = 0.f;
  for (int k = threadIdx.x; k < p.K; k += blockDim.x) m = fmaxf(m, fabsf(Num<T>::f(x[k])));
  for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < blockDim.x / 32; ++w) m = fmaxf(m, warp_max[w]);
    const float s = p.act_clip * m / float((1 << (p.act_bits - 1)) - 1);
    p.act_scale[blockIdx.x] = s > 0.f ? s : 1.f;
  }
}

// One 128-input step of a lane for TN consecutive 16-row tiles: their codes and the scales (and zero points) of the
// groups the step covers.
template <typename T, int BITS, int TPG>
struct Step {
  static constexpr int V = (BITS == 3 ? 4 : 2 * BITS) / 4;  // 16-byte loads of the main plane per tile
  static constexpr int NG = 8 / TPG;                        // groups in the step
  uint4 q[TN][V];
  uint2 qh[TN];
  T s[TN][NG][2], z[TN][NG][2];  // rows g and g + 8
};

// TPG: k-tiles per scale group inside one 128-wide step (2, 4, or 8 for groups of 32, 64, or >= 128). Tiles past
// the last (a ragged final tile group) and steps past K_pad (the warps' equal K split) load nothing.
template <typename T, int BITS, int TPG>
__device__ __forceinline__ void load_step(Step<T, BITS, TPG>& st, const Args& p, int tile0, int ks, int lane) {
  using S = Step<T, BITS, TPG>;
  const int KS = p.K_pad / KSTEP, NT = p.N / 16, g = lane / 4;
  if (ks >= KS) return;
#pragma unroll
  for (int tn = 0; tn < TN; ++tn) {
    const int tile = tile0 + tn;
    if (tile >= NT) break;
    const size_t at = ((size_t)tile * KS + ks) * 32 + lane;
    const uint4* codes = reinterpret_cast<const uint4*>(p.codes) + at * S::V;
#pragma unroll
    for (int v = 0; v < S::V; ++v) st.q[tn][v] = __ldg(codes + v);
    if constexpr (BITS == 3) st.qh[tn] = __ldg(reinterpret_cast<const uint2*>(p.hi) + at);
    const T* sc = static_cast<const T*>(p.scales) + (size_t)tile * p.G_pad * 16;
    const T* zp = static_cast<const T*>(p.zeros) + (size_t)tile * p.G_pad * 16;
#pragma unroll
    for (int gi = 0; gi < S::NG; ++gi) {
      const int grp = (ks * KSTEP + gi * TPG * 16) / p.group;
      st.s[tn][gi][0] = sc[grp * 16 + g];
      st.s[tn][gi][1] = sc[grp * 16 + g + 8];
      if (p.zeros) {
        st.z[tn][gi][0] = zp[grp * 16 + g];
        st.z[tn][gi][1] = zp[grp * 16 + g + 8];
      }
    }
  }
}

// Integer codes of two activations (fp16/bf16 pair h) of a token with scale s: clamp(round(x / s), -qmax - 1, qmax),
// exact in T.
template <typename T>
__device__ __forceinline__ uint32_t act_codes(uint32_t h, float s, float qmax) {
  using Nm = Num<T>;
  using T2 = typename Nm::T2;
  const T2 v = as_t2<T2>(h);
  T2 q;
  q.x = Nm::one(fminf(fmaxf(rintf(Nm::f(v.x) / s), -qmax - 1.f), qmax));
  q.y = Nm::one(fminf(fmaxf(rintf(Nm::f(v.y) / s), -qmax - 1.f), qmax));
  return as_u32(q);
}

// The B fragments of step ks: token nb * 8 + g, mma columns 16 t + 2 tig (+1) and + 8 (+9) of the step's k-tile t,
// which are (decode_layout.mma_columns) the inputs [8 tig, 8 tig + 8) of the 32-chunk of k-tiles 2u and 2u + 1: one
// 16-byte load per chunk. Quantized per token (W4A4 / W4A8) when act_bits > 0. Chunks lie wholly inside or outside K
// (a multiple of 32); x is 16-byte aligned (the caller checks).
template <typename T, int NB>
__device__ __forceinline__ void load_x(uint32_t (&xb)[NB][8][2], const Args& p, int ks, int g, int tig, float qmax,
                                       const T* xs) {
  const T* x = xs ? xs : static_cast<const T*>(p.x);
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const int k = ks * KSTEP + 32 * u + 8 * tig;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      const int tok = nb * 8 + g;
      const uint4 v = !(tok < p.M && k < p.K) ? make_uint4(0u, 0u, 0u, 0u)
                      : xs ? *reinterpret_cast<const uint4*>(x + (size_t)tok * p.K + k)
                           : __ldg(reinterpret_cast<const uint4*>(x + (size_t)tok * p.K + k));
      xb[nb][2 * u][0] = v.x, xb[nb][2 * u][1] = v.y, xb[nb][2 * u + 1][0] = v.z, xb[nb][2 * u + 1][1] = v.w;
    }
  }
  if (p.act_bits) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      const float s = p.act_scale[min(nb * 8 + g, p.M - 1)];
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        xb[nb][t][0] = act_codes<T>(xb[nb][t][0], s, qmax);
        xb[nb][t][1] = act_codes<T>(xb[nb][t][1], s, qmax);
      }
    }
  }
}

// Step ks's 8 k-tiles for the TN tiles: dequantize the codes, mma with the activations (read once for the TN tiles),
// scale each group's partial sums into acc. The TN tiles' mma chains interleave, so neither waits on its own.
template <typename T, int BITS, int TPG, int NB>
__device__ __forceinline__ void compute_step(const Step<T, BITS, TPG>& st, float (&acc)[TN][NB][4], const Args& p,
                                             int ks, float qmax, int lane, const T* xs) {
  using Nm = Num<T>;
  using T2 = typename Nm::T2;
  if (ks >= p.K_pad / KSTEP) return;
  uint32_t xb[NB][8][2];
  load_x<T, NB>(xb, p, ks, lane / 4, lane % 4, qmax, xs);
  const T2 zsym = Nm::two(float(1 << (BITS - 1)));
  const bool asym = p.zeros != nullptr;
  const int tiles = (p.K - ks * KSTEP) / 16;  // k-tiles of this step inside K (8 unless K is padded here)
#pragma unroll
  for (int gi = 0; gi < 8 / TPG; ++gi) {
    T2 z[TN][2];
    float part[TN][NB][4] = {};
#pragma unroll
    for (int tn = 0; tn < TN; ++tn) {
      z[tn][0] = asym ? Nm::two(Nm::f(st.z[tn][gi][0])) : zsym;
      z[tn][1] = asym ? Nm::two(Nm::f(st.z[tn][gi][1])) : zsym;
    }
#pragma unroll
    for (int tt = 0; tt < TPG; ++tt) {
      const int t = gi * TPG + tt;
      if (t >= tiles) break;  // K's padding
#pragma unroll
      for (int tn = 0; tn < TN; ++tn) {
        const uint32_t qh[2] = {st.qh[tn].x, st.qh[tn].y};
        uint32_t a[4];
#pragma unroll
        for (int j = 0; j < 4; ++j)  // a[j] = (a_2j, a_2j+1): rows g (j even) or g + 8 (j odd)
          a[j] = dequant_pair<T, BITS>(reinterpret_cast<const uint32_t*>(st.q[tn]), qh, t * 4 + j, z[tn][j & 1]);
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) mma<T>(part[tn][nb], a, xb[nb][t][0], xb[nb][t][1]);
      }
    }
#pragma unroll
    for (int tn = 0; tn < TN; ++tn) {
      const float s0 = Nm::f(st.s[tn][gi][0]), s8 = Nm::f(st.s[tn][gi][1]);
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
        acc[tn][nb][0] += s0 * part[tn][nb][0];
        acc[tn][nb][1] += s0 * part[tn][nb][1];
        acc[tn][nb][2] += s8 * part[tn][nb][2];
        acc[tn][nb][3] += s8 * part[tn][nb][3];
      }
    }
  }
}

// The block's warps' partial sums of the tile group at tile0 meet in shared memory; every thread then sums some of
// the outputs over the warps and writes them (times the token's activation scale with integer activations).
template <typename T, int NB>
__device__ __forceinline__ void finish_tiles(float (&acc)[TN][NB][4], float (*partial)[TN][NB][4][32], const Args& p,
                                             int tile0, int warp, int lane) {
  const int warps = blockDim.x / 32;
#pragma unroll
  for (int tn = 0; tn < TN; ++tn)
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        partial[warp][tn][nb][c][lane] = acc[tn][nb][c];
        acc[tn][nb][c] = 0.f;
      }
  __syncthreads();
  T* y = static_cast<T*>(p.y);
  for (int e = threadIdx.x; e < TN * NB * 4 * 32; e += blockDim.x) {
    const int l = e % 32, c = e / 32 % 4, nb = e / 128 % NB, tn = e / (128 * NB);
    // c0, c1: row g, tokens 2 tig, 2 tig + 1; c2, c3: row g + 8
    const int tok = nb * 8 + 2 * (l % 4) + (c & 1), tile = tile0 + tn, row = tile * 16 + l / 4 + 8 * (c >> 1);
    if (tok >= p.M || tile >= p.N / 16) continue;
    float sum = 0.f;
    for (int w = 0; w < warps; ++w) sum += partial[w][tn][nb][c][l];
    if (p.act_bits) sum *= p.act_scale[tok];
    y[(size_t)tok * p.N + row] = Num<T>::one(sum);
  }
  __syncthreads();
}

// A lane's place in its block's sequence of (tile group, step): steps of one group, then the next group.
struct Cursor {
  int tile, step;
  __device__ __forceinline__ void next(int steps) {
    if (++step == steps) step = 0, tile += gridDim.x * TN;
  }
};

// Block b computes tile groups b, b + gridDim.x, ...; warp w the steps [w n, (w + 1) n) of each. Every warp of a
// block walks the same tile groups, so the __syncthreads in finish_tiles are uniform.
template <typename T, int BITS, int TPG, int NB>
__global__ void __launch_bounds__(WARPS * 32, min_blocks<BITS, TPG, NB>()) decode_gemm_kernel(const Args p) {
  using S = Step<T, BITS, TPG>;
  __shared__ float partial[WARPS][TN][NB][4][32];
  extern __shared__ uint4 x_stage[];  // x [M, K] when p.x_smem (the launch gives M K sizeof(T) bytes)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32, NT = p.N / 16;
  const int KS = p.K_pad / KSTEP, n = (KS + warps - 1) / warps, ks0 = warp * n;
  const float qmax = p.act_bits ? float((1 << (p.act_bits - 1)) - 1) : 0.f;
  Cursor load{(int)blockIdx.x * TN, 0}, run = load;
  S st[DEPTH];
#pragma unroll
  for (int d = 0; d < DEPTH; ++d) {
    if (load.tile < NT) load_step(st[d], p, load.tile, ks0 + load.step, lane);
    load.next(n);
  }
  const T* xs = nullptr;
  if (p.x_smem) {  // x read once per block (16-byte loads), then every step's fragments come from shared memory
    const int n16 = p.M * p.K * (int)sizeof(T) / 16;
    for (int i = threadIdx.x; i < n16; i += blockDim.x) x_stage[i] = __ldg(reinterpret_cast<const uint4*>(p.x) + i);
    __syncthreads();
    xs = reinterpret_cast<const T*>(x_stage);
  }
  float acc[TN][NB][4] = {};
  while (run.tile < NT) {
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) {
      if (run.tile < NT) {
        compute_step<T, BITS, TPG, NB>(st[d], acc, p, ks0 + run.step, qmax, lane, xs);
        if (load.tile < NT) load_step(st[d], p, load.tile, ks0 + load.step, lane);
        load.next(n);
        if (run.step == n - 1) finish_tiles<T, NB>(acc, partial, p, run.tile, warp, lane);
        run.next(n);
      }
    }
  }
}

template <typename T, int BITS, int TPG, int NB>
cudaError_t launch(const Args& p, int max_blocks, cudaStream_t stream) {
  static int resident[64] = {};  // resident blocks on each whole GPU (by device ordinal)
  int dev = 0;
  cudaGetDevice(&dev);
  int& slots = resident[dev % 64];
  if (!slots) {
    int sms = 0, per_sm = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode_gemm_kernel<T, BITS, TPG, NB>, WARPS * 32, 0);
    slots = sms * (per_sm > 0 ? per_sm : 1);
  }
  const int KS = p.K_pad / KSTEP, warps = KS < WARPS ? KS : WARPS, groups = (p.N / 16 + TN - 1) / TN;
  const int cap = max_blocks > 0 && max_blocks < slots ? max_blocks : slots;
  if (p.act_bits) act_scale_kernel<T><<<p.M, 256, 0, stream>>>(p);
  Args q = p;
  const size_t x_bytes = (size_t)p.M * p.K * sizeof(T);
  q.x_smem = x_bytes <= X_SMEM_MAX;
  decode_gemm_kernel<T, BITS, TPG, NB><<<groups < cap ? groups : cap, warps * 32, q.x_smem ? x_bytes : 0, stream>>>(q);
  return cudaGetLastError();
}

template <typename T, int BITS, int TPG>
cudaError_t by_rows(const Args& p, int max_blocks, cudaStream_t stream) {
  return p.M > 8 ? launch<T, BITS, TPG, 2>(p, max_blocks, stream) : launch<T, BITS, TPG, 1>(p, max_blocks, stream);
}

template <typename T, int BITS>
cudaError_t by_group(const Args& p, int max_blocks, cudaStream_t stream) {
  const int tiles = p.group >= KSTEP ? 8 : p.group / 16;
  if (tiles == 2) return by_rows<T, BITS, 2>(p, max_blocks, stream);
  if (tiles == 4) return by_rows<T, BITS, 4>(p, max_blocks, stream);
  return by_rows<T, BITS, 8>(p, max_blocks, stream);
}

template <typename T>
cudaError_t by_bits(int bits, const Args& p, int max_blocks, cudaStream_t stream) {
  switch (bits) {
    case 2: return by_group<T, 2>(p, max_blocks, stream);
    case 3: return by_group<T, 3>(p, max_blocks, stream);
    case 4: return by_group<T, 4>(p, max_blocks, stream);
    default: return by_group<T, 8>(p, max_blocks, stream);
  }
}

}  // namespace

// The C entry point tbq_kernels/decode_gemm.py calls through ctypes. dtype: 0 float16, 1 bfloat16. act_bits 0: x as
// given (W*A16); 4 or 8: x quantized per token first (W4A4, W4A8), act_scale a float32 [M] scratch buffer.
// max_blocks: blocks launched at most (0: one per resident slot). Shapes and layouts are checked by the caller.
// Returns the launch's cudaError_t (0: launched).
extern "C" int tbq_decode_gemm(int dtype, int bits, const void* x, const void* codes, const void* hi,
                               const void* scales, const void* zeros, void* y, float* act_scale, int M, int N, int K,
                               int K_pad, int group, int G_pad, int act_bits, float act_clip, int max_blocks,
                               void* stream) {
  const Args p{x, static_cast<const uint32_t*>(codes), static_cast<const uint32_t*>(hi), scales, zeros, y, act_scale,
               M, N, K, K_pad, group, G_pad, act_bits, act_clip, 0};
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return dtype == 0 ? by_bits<__half>(bits, p, max_blocks, s) : by_bits<__nv_bfloat16>(bits, p, max_blocks, s);
}
