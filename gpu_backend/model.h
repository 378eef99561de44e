/*
 * model.h - a decoder model in Hugging Face layout: config.json plus
 * model.safetensors (or a sharded model.safetensors.index.json).
 *
 * Four architectures, one forward pass with a few switches:
 *   LlamaForCausalLM   the base: RMSNorm, RoPE (optionally Llama-3
 *                      scaled), GQA, SwiGLU
 *   Qwen2ForCausalLM   + q/k/v biases
 *   GlmForCausalLM     + q/k/v biases (attention_bias), partial RoPE on
 *                      interleaved pairs, gate and up in one tensor
 *   Glm4ForCausalLM    GLM + a norm on the attention output and on the
 *                      MLP output before each residual add
 *
 * Loading checks everything an engine relies on (architecture, shapes,
 * dtypes, file bounds) so that an engine never meets a surprise; on any
 * problem it fails with a message that names the file and the problem.
 * Tensors stay in the mmapped files in their stored dtype: each engine
 * converts them to what it computes in (f32 on the CPU, bf16 on a GPU).
 */

#ifndef GPU_MODEL_H
#define GPU_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

typedef enum {
    MODEL_LLAMA = 0,
    MODEL_QWEN2,
    MODEL_GLM,
    MODEL_GLM4
} model_arch_e;

typedef struct {
    char     architecture[64];    /* "LlamaForCausalLM" */
    model_arch_e arch;
    char     torch_dtype[16];     /* "float32", "bfloat16", "float16" */
    int      dim;                 /* hidden_size */
    int      hidden_dim;          /* intermediate_size */
    int      n_layers;
    int      n_heads;
    int      n_kv_heads;
    int      head_dim;
    int      vocab_size;
    int      max_seq_len;         /* max_position_embeddings */
    float    rms_eps;
    float    rope_theta;
    /* RoPE rotates the first rope_dim dims of each head (partial rotary:
     * head_dim * partial_rotary_factor), in pairs (2i, 2i + 1) when
     * rope_interleaved (GLM), else (i, i + rope_dim / 2) (Llama, Qwen2) */
    int      rope_dim;
    int      rope_interleaved;
    /* rope_scaling {"rope_type": "llama3", ...}: only inv_freq changes */
    int      rope_llama3;
    float    rope_factor, rope_low_freq, rope_high_freq;
    int      rope_orig_max_pos;
    int      qkv_bias;            /* q_proj, k_proj, v_proj have biases */
    int      fused_gate_up;       /* mlp.gate_up_proj: [gate; up] rows */
    int      post_norms;          /* Glm4: post_self_attn_layernorm and
                                   * post_mlp_layernorm */
    int      tied_embeddings;     /* tie_word_embeddings */
    int      bos_id;              /* -1 if absent */
    int      eos_ids[8];          /* eos_token_id, int or list */
    int      n_eos;
} model_config_t;

typedef struct {
    const st_tensor_t  *attn_norm;    /* [dim] */
    const st_tensor_t  *wq;           /* [n_heads*head_dim, dim] */
    const st_tensor_t  *wk;           /* [n_kv_heads*head_dim, dim] */
    const st_tensor_t  *wv;           /* [n_kv_heads*head_dim, dim] */
    const st_tensor_t  *bq, *bk, *bv; /* their biases, or NULL */
    const st_tensor_t  *wo;           /* [dim, n_heads*head_dim] */
    const st_tensor_t  *post_attn_norm; /* [dim] Glm4, else NULL */
    const st_tensor_t  *ffn_norm;     /* [dim] */
    const st_tensor_t  *w_gate;       /* [hidden, dim]; NULL if fused */
    const st_tensor_t  *w_up;         /* [hidden, dim]; NULL if fused */
    const st_tensor_t  *w_gate_up;    /* [2 hidden, dim] or NULL */
    const st_tensor_t  *w_down;       /* [dim, hidden] */
    const st_tensor_t  *post_ffn_norm;  /* [dim] Glm4, else NULL */
} model_layer_t;

typedef struct {
    char                 dir[1024];
    char                 name[128];   /* directory basename */
    model_config_t       cfg;
    st_set_t            *weights;     /* all shards */
    const st_tensor_t   *tok_emb;     /* [vocab, dim] */
    model_layer_t       *layers;      /* [n_layers] */
    const st_tensor_t   *final_norm;  /* [dim] */
    const st_tensor_t   *lm_head;     /* [vocab, dim]; tok_emb if tied */
} model_t;

/* parse and check config.json; 0 or -1 with err set */
int model_config_load(const char *path, model_config_t *c,
    char *err, size_t errlen);

/* load config.json and the weights of the model in dir; 0 or -1 */
int model_load(const char *dir, model_t *m, char *err, size_t errlen);
void model_free(model_t *m);

/* RoPE's rope_dim / 2 inverse frequencies, as transformers computes
 * them (theta^(-2i/rope_dim), then Llama-3 scaling if configured) */
void model_rope_inv_freq(const model_config_t *c, float *inv_freq);

/* copy a tensor to f32, whatever its stored dtype */
void model_tensor_to_f32(const st_tensor_t *t, float *out);

#endif /* GPU_MODEL_H */
