/*
 * model.h - a decoder model in Hugging Face layout: config.json plus
 * model.safetensors (or a sharded model.safetensors.index.json).
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

typedef struct {
    char     architecture[64];    /* "LlamaForCausalLM" */
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
    const st_tensor_t  *wo;           /* [dim, n_heads*head_dim] */
    const st_tensor_t  *ffn_norm;     /* [dim] */
    const st_tensor_t  *w_gate;       /* [hidden, dim] */
    const st_tensor_t  *w_up;         /* [hidden, dim] */
    const st_tensor_t  *w_down;       /* [dim, hidden] */
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

/* copy a tensor to f32, whatever its stored dtype */
void model_tensor_to_f32(const st_tensor_t *t, float *out);

#endif /* GPU_MODEL_H */
