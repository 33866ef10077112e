// gptlab serve: the page. Plain JavaScript, no libraries, no build step; everything it shows
// comes from the JSON API (/openapi.json describes it).
"use strict";

const I18N = {
  en: {
    generate: "Generate", prompt_placeholder: "Type a prompt (empty: start afresh)",
    temperature: "temperature", max_new_tokens: "max new tokens", seed: "seed",
    generate_button: "Generate", stop: "Stop", analyse: "Analyse text",
    download_json: "Download JSON", download_png: "Download PNG",
    download_grid: "Download grid PNG",
    chip_hint: "Click a token to choose the position the views below look at.",
    next_table: "Next token", token: "token", p_sampled: "p (sampled)",
    next_hint: "The likeliest next tokens after the chosen position: as the model gives them, and as sampling draws them (after temperature, top-k, top-p). Click one to continue from it.",
    attention: "Attention", layer: "layer", head: "head",
    grid_hint: "Every head (rows: layers, columns: heads). Click one.",
    shade_hint: "The chosen query token's attention, as shading over the text:",
    lens: "Logit lens",
    lens_hint: "The token each layer would predict at each position if the residual stream went straight to ln_f and the head. The last row is the model's own prediction.",
    heads: "Heads",
    heads_hint: "Computed on the current text (induction: on a random sequence repeated twice). Click a column to sort, a row to see its heatmap; tick \"off\" to ablate the head.",
    entropy: "entropy", prev: "previous token", sink: "first token", induction: "induction",
    off: "off", embeddings: "embeddings", ablated: "switched off:", busy: "busy",
    p_intact: "p (all heads on)",
    server: "", empty_prompt: "The prompt is empty: the views show the start token alone (what a generation from nothing begins with).",
    ablated_note: "The last column gives each token's p with every head on, and the change. Switching heads off acts on this table only.",
    readout: (q, k, w) => `query ${q} → key ${k}: ${w}`,
    steps: "One head, step by step",
    steps_hint: "The chosen layer and head, for the chosen query token, computed in float32 from the model's own weights: its query q against every key k, divided by the square root of the head size, the future masked, then softmax; the output is those weights' sum of the values.",
    key: "key", masked: "masked",
    scale: "colour scale", linear: "linear", log: "log (4 decades)",
    steps_vectors: "At the chosen query token, the vectors in order (bars: each number, red above 0, blue below):",
    all_heads: (n, C) => `${n} heads side by side`,
    keys_queries: "keys →, queries ↓", masked_white: "white above the diagonal: masked",
    lens_window: (a, b, T) => `positions #${a} to #${b} of ${T}, around the chosen token`,
    window_note: (n, block, o) => `The text has ${n} tokens; the model reads the last ${block} (from #${o}), as sampling does: the views show those.`,
    outside: "before the window the model reads",
    partial: "That token is part of a character (its bytes are shown as ‹…›): the text would end half-way through it. Pick another token.",
    model_line: (x) => `${x.name} (${x.n_layer} layers × ${x.n_head} heads, ` +
      `${x.parameters.toLocaleString()} parameters, ` +
      `${x.quantized ? `${x.quantized} weights computing in ` : ""}${x.dtype})`,
    gain_bias: "gain, bias", int8_head: "an int8 copy of wte (the float model ties them)",
    bars_title: (n, limit) => `${n} numbers; the bars span ±${limit.toFixed(3)}`,
    c_proj_out: "c_proj(heads), added to x", mlp_hidden: "GELU(c_fc(ln_2(x)))", mlp_out: "c_proj(…): the MLP's output, added to x",
    wait_generation: "A generation is running: wait for it to end (or Stop it) first.",
    step_other_model: "The snapshots are model 0's: choose model 0 under “views of” to use them.",
    views_of: "views of", learn: "Watch it learn", step: "step",
    learn_hint: "The run kept its weights at every evaluation. Move the slider: every view below, and Generate, use the weights of that step.",
    learn_sample: "A sample at this step (temperature 0.8, seed 1337, from the start token):",
    step_label: (s, n) => s === null ? `final weights (${n} snapshots)` : `step ${s.step}` +
      (s.val_loss == null ? " (before training)" : ` (val loss ${s.val_loss.toFixed(4)})`),
    loss_legend: "train loss (grey), val loss (blue)",
    model: "Model", model_hint: "The loaded model's parts with their real shapes and parameter counts (T = the text's tokens). Click a part to open its view.",
    block_repeat: (n) => `block, repeated ${n} times (the shapes of one; parameters: all ${n})`,
    tied: "the same matrix as wte (tied): no parameters of its own",
    params: "parameters",
    embeddings_title: "Embeddings", nearest_hint: "Nearest tokens in wte (cosine similarity):",
    embeddings_token: (p, id) => `The chosen token ${p} (id ${id}): its row of wte, compared with every other row.`,
    pca_hint: (e, n) => `${n} tokens on wte's two principal directions (${(100 * e[0]).toFixed(1)}% and ${(100 * e[1]).toFixed(1)}% of the variance); the text's tokens in red.`,
    wpe_hint: "wpe (positions × first channels):", wpe_sim_hint: "Cosine similarity of positions, learned wpe:",
    sin_sim_hint: "…and of the sinusoidal encoding of the same size (§9):",
    positions_note: (n, b) => `${n} of the ${b} positions, spread evenly (0 at the top left).`,
    qkv_hint: "Rows: positions; columns: the head's hs numbers (blue below 0, red above). The chosen query's row is outlined.",
    residual: "Residual stream and LayerNorm",
    residual_hint: "Each block adds what its attention and its MLP compute to the stream (x + attn(ln_1(x)), then x + mlp(ln_2(x))). The size (norm) of the stream at each position after each step:",
    layernorm_of: "LayerNorm", ln_x: "x, the stream at the chosen token",
    ln_norm: "(x − mean) / √(var + eps): mean 0, variance 1", ln_out: "× gain + bias: what the next layer reads",
    ln_option: (l, n, norm) => l < n ? `${norm} of block ${l}` + (norm === "ln_2" ? " (and the MLP after it)" : "") : "ln_f (before the head)",
    ln_numbers: (d, m, v) => `Token #${d.position}: x has mean ${d.mean.toFixed(4)} and variance ${d.var.toFixed(4)} (eps ${d.eps}); after normalising, mean ${m.toFixed(4)} and variance ${v.toFixed(4)}` +
      ` (= var / (var + eps): 1 unless the variance is as small as eps).`,
    rows_residual: (l) => [`+ attention ${l}`, `+ MLP ${l}`, `after block ${l}`],
    tour: "Tour",
    tour_steps: [
      ["generate-view", 1, "Tokens", "The text becomes token ids. Each chip is one token: its text and, small, its id. Click a chip: every view below looks at that position."],
      ["model-view", 11, "The model", "The whole network with its real shapes: the embeddings, n_layer blocks, ln_f and the head. Click a part to go to its view."],
      ["embeddings-view", 12, "Embeddings", "An id picks a row of wte (what the token is), a position a row of wpe (where it is); the first block reads their sum. Similar tokens get similar rows."],
      ["steps-view", 13, "One head, step by step", "ln_1, then this head's q, k, v; the scores q·k, divided by √hs, the future masked, softmax; the output is the weighted sum of v."],
      ["attention-view", 7, "Multi-head", "Every head of every layer at once: each has its own q, k, v and looks for something else. Their outputs side by side go through c_proj."],
      ["residual-view", 14, "The block", "A block adds attention's output to the stream, then the MLP's: x + attn(ln_1(x)), x + mlp(ln_2(x)). LayerNorm sets each vector to mean 0, variance 1, then scales it."],
      ["lens-view", 14, "Logit lens", "Read the stream through ln_f and the head after each block: what the model would predict if it stopped there."],
      ["next-view", 17, "Sampling", "The last position's logits, softmax, then temperature, top-k and top-p: the table the next token is drawn from. Click one to continue."],
    ],
    steps_rows: ["q · k", "÷ √hs", "causal mask", "softmax"],
    steps_shapes: (m, T, p) => `layer ${m.layer}, head ${m.head}, query #${p}. Shapes: x (${T}, ${m.C}) → ln_1 (${T}, ${m.C}) → c_attn (${m.C}, ${3 * m.C}) → q, k, v (${T}, ${m.hs}) for this head → scores (${T}) → ÷ √${m.hs} = ${Math.sqrt(m.hs).toFixed(2)} → mask → softmax (${T}) → weights · v (${m.hs}); ${m.nh} heads side by side (${m.C}) → c_proj (${m.C}, ${m.C}).`,
  },
  zh: {
    generate: "生成", prompt_placeholder: "输入提示（留空：从头开始）",
    temperature: "温度", max_new_tokens: "最多新词元", seed: "随机种子",
    generate_button: "生成", stop: "停止", analyse: "分析文本",
    download_json: "下载 JSON", download_png: "下载 PNG", download_grid: "下载全部热图 PNG",
    chip_hint: "点击一个词元，选择下面各视图查看的位置。",
    next_table: "下一个词元", token: "词元", p_sampled: "p（采样）",
    next_hint: "所选位置之后最可能的词元：模型给出的概率，以及采样实际使用的概率（经过温度、top-k、top-p）。点击一个从它继续。",
    attention: "注意力", layer: "层", head: "头",
    grid_hint: "所有的头（行：层，列：头）。点击一个。",
    shade_hint: "所选查询词元的注意力，以文本上的深浅显示：",
    lens: "Logit 透镜",
    lens_hint: "如果残差流直接经过 ln_f 和输出头，每一层在每个位置会预测的词元。最后一行是模型自己的预测。",
    heads: "注意力头",
    heads_hint: "在当前文本上计算（归纳分数：在重复两次的随机序列上）。点击列名排序，点击一行查看其热图；勾选“关闭”以消融该头。",
    entropy: "熵", prev: "前一个词元", sink: "第一个词元", induction: "归纳",
    off: "关闭", embeddings: "嵌入", ablated: "已关闭：", busy: "忙",
    p_intact: "p（所有头都开启）",
    server: "服务器的说明（英文）：", empty_prompt: "提示为空：各视图只显示起始词元（从零开始生成时的第一个词元）。",
    ablated_note: "最后一列是所有头都开启时每个词元的 p 及其变化。关闭头只影响这张表。",
    readout: (q, k, w) => `查询 ${q} → 键 ${k}：${w}`,
    steps: "单个头，逐步计算",
    steps_hint: "所选的层和头对所选查询词元的计算，用模型自己的权重以 float32 算出：它的查询 q 与每个键 k 做点积，除以头维度的平方根，遮住未来，再做 softmax；输出是这些权重对值的加权和。",
    key: "键", masked: "已掩蔽",
    scale: "色标", linear: "线性", log: "对数（4 个数量级）",
    steps_vectors: "在所选查询词元处，依次经过的向量（条形：每个数，红色大于 0，蓝色小于 0）：",
    all_heads: (n, C) => `${n} 个头并排`,
    keys_queries: "键 →，查询 ↓", masked_white: "对角线以上的白色：已掩蔽",
    lens_window: (a, b, T) => `共 ${T} 个位置，显示所选词元附近的 #${a} 至 #${b}`,
    window_note: (n, block, o) => `文本共有 ${n} 个词元；模型只读最后 ${block} 个（从 #${o} 开始），与采样时相同：各视图显示的就是这些。`,
    outside: "在模型读取的窗口之前",
    partial: "这个词元只是一个字符的一部分（以 ‹…› 显示它的字节）：文本会停在这个字符的中间。请换一个词元。",
    model_line: (x) => `${x.name}（${x.n_layer} 层 × ${x.n_head} 个头，` +
      `${x.parameters.toLocaleString()} 个参数，` +
      `${x.quantized ? `${x.quantized} 权重，以 ` : ""}${x.dtype}${x.quantized ? " 计算" : ""}）`,
    gain_bias: "增益、偏置", int8_head: "wte 的 int8 副本（浮点模型中两者共享）",
    bars_title: (n, limit) => `${n} 个数；条形范围 ±${limit.toFixed(3)}`,
    c_proj_out: "c_proj(各头)，加到 x 上", mlp_hidden: "GELU(c_fc(ln_2(x)))", mlp_out: "c_proj(…)：MLP 的输出，加到 x 上",
    wait_generation: "正在生成：请等它结束（或点停止）。",
    step_other_model: "快照属于模型 0：在“视图对应”中选择模型 0 才能使用。",
    views_of: "视图对应", learn: "看它学习", step: "步数",
    learn_hint: "训练时在每次评估都保存了权重。拖动滑块：下面所有视图以及“生成”都使用那一步的权重。",
    learn_sample: "这一步的一个样本（温度 0.8，随机种子 1337，从起始词元开始）：",
    step_label: (s, n) => s === null ? `最终权重（共 ${n} 个快照）` : `第 ${s.step} 步` +
      (s.val_loss == null ? "（训练之前）" : `（验证损失 ${s.val_loss.toFixed(4)}）`),
    loss_legend: "训练损失（灰），验证损失（蓝）",
    model: "模型", model_hint: "已加载模型的各个部分，带着真实的形状和参数量（T = 文本的词元数）。点击一个部分打开它的视图。",
    block_repeat: (n) => `块，重复 ${n} 次（形状为一个块的；参数量为全部 ${n} 个）`,
    tied: "与 wte 是同一个矩阵（权重共享）：没有自己的参数",
    params: "个参数",
    embeddings_title: "嵌入", nearest_hint: "wte 中最接近的词元（余弦相似度）：",
    embeddings_token: (p, id) => `所选词元 ${p}（编号 ${id}）：它在 wte 中的那一行，与其他每一行比较。`,
    pca_hint: (e, n) => `${n} 个词元投影到 wte 的两个主方向上（分别占方差的 ${(100 * e[0]).toFixed(1)}% 和 ${(100 * e[1]).toFixed(1)}%）；红色为文本中的词元。`,
    wpe_hint: "wpe（位置 × 前若干通道）：", wpe_sim_hint: "位置之间的余弦相似度，学到的 wpe：",
    sin_sim_hint: "……以及同样大小的正弦位置编码（§9）：",
    positions_note: (n, b) => `${b} 个位置中均匀取 ${n} 个（左上角为 0）。`,
    qkv_hint: "行：位置；列：这个头的 hs 个数（蓝色小于 0，红色大于 0）。所选查询的那一行有外框。",
    residual: "残差流与层归一化",
    residual_hint: "每个块把注意力和 MLP 的结果加到残差流上（x + attn(ln_1(x))，再 x + mlp(ln_2(x))）。每一步之后，每个位置上残差流的大小（范数）：",
    layernorm_of: "层归一化", ln_x: "x，所选词元处的残差流",
    ln_norm: "(x − 均值) / √(方差 + eps)：均值 0，方差 1", ln_out: "× 增益 + 偏置：下一层读到的",
    ln_option: (l, n, norm) => l < n ? `第 ${l} 块的 ${norm}` + (norm === "ln_2" ? "（以及其后的 MLP）" : "") : "ln_f（输出头之前）",
    ln_numbers: (d, m, v) => `词元 #${d.position}：x 的均值为 ${d.mean.toFixed(4)}，方差为 ${d.var.toFixed(4)}（eps ${d.eps}）；归一化之后，均值为 ${m.toFixed(4)}，方差为 ${v.toFixed(4)}` +
      `（= 方差 / (方差 + eps)：除非方差小到与 eps 相当，否则为 1）。`,
    rows_residual: (l) => [`+ 注意力 ${l}`, `+ MLP ${l}`, `第 ${l} 块之后`],
    tour: "导览",
    tour_steps: [
      ["generate-view", 1, "词元", "文本先变成词元编号。每个小块是一个词元：它的文本，以及小字的编号。点击一个：下面所有视图都看这个位置。"],
      ["model-view", 11, "模型", "整个网络及其真实形状：嵌入、n_layer 个块、ln_f 和输出头。点击一个部分跳到它的视图。"],
      ["embeddings-view", 12, "嵌入", "编号选出 wte 的一行（这是什么词元），位置选出 wpe 的一行（它在哪里）；第一个块读的是两者之和。相似的词元有相似的行。"],
      ["steps-view", 13, "单个头，逐步计算", "先 ln_1，再算这个头的 q、k、v；评分 q·k，除以 √hs，遮住未来，softmax；输出是 v 的加权和。"],
      ["attention-view", 7, "多头", "所有层的所有头：每个头有自己的 q、k、v，各自寻找不同的东西。它们的输出并排后经过 c_proj。"],
      ["residual-view", 14, "块", "一个块先把注意力的输出加到残差流上，再加上 MLP 的：x + attn(ln_1(x))，x + mlp(ln_2(x))。层归一化把每个向量变为均值 0、方差 1，再缩放。"],
      ["lens-view", 14, "Logit 透镜", "在每个块之后把残差流经过 ln_f 和输出头：如果模型在这里停下，它会预测什么。"],
      ["next-view", 17, "采样", "最后一个位置的 logits，softmax，再经过温度、top-k 和 top-p：下一个词元就从这张表中抽取。点击一个继续。"],
    ],
    steps_rows: ["q · k", "÷ √hs", "因果掩码", "softmax"],
    steps_shapes: (m, T, p) => `第 ${m.layer} 层，第 ${m.head} 个头，查询 #${p}。形状：x (${T}, ${m.C}) → ln_1 (${T}, ${m.C}) → c_attn (${m.C}, ${3 * m.C}) → 这个头的 q、k、v (${T}, ${m.hs}) → 评分 (${T}) → ÷ √${m.hs} = ${Math.sqrt(m.hs).toFixed(2)} → 掩蔽 → softmax (${T}) → 权重 · v (${m.hs})；${m.nh} 个头并排 (${m.C}) → c_proj (${m.C}, ${m.C})。`,
  },
};

const $ = (id) => document.getElementById(id);
const state = {
  lang: "en", info: null, tokens: [], position: null, layer: 0, head: 0,
  ablate: [], generated: [], abort: null, big: null, results: {}, sortKey: "layer",
  epoch: 0, generating: false, fromStart: false, // epoch: which text the views are about
  offset: 0, // the first token the model reads: the views show the last block_size tokens
  viewModel: 0, // which model the views are about (with --compare: 0 or 1)
  step: null, // a snapshot of model 0's run (null: its final weights)
  snapshots: [], tour: 0, scale: "linear",
};
const model = () => state.info.models[state.viewModel];
const t = (key) => I18N[state.lang][key];

function say(message) {
  $("status").textContent = message || "";
}

// An answer about a text that has changed since it was asked for (a new generation, another
// prompt): dropped, never drawn, never shown as an error.
class Stale extends Error {}

async function post(path, body) {
  const epoch = state.epoch;
  const response = await fetch(path, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await response.json();
  if (epoch !== state.epoch) throw new Stale(path);
  if (!response.ok) throw new Error(serverSays(data.error || response.statusText));
  return data;
}

// The server's reason, in its own words (English), said to be the server's in the page's
// language.
function serverSays(reason) {
  return `${t("server")}${reason}`;
}

// Run a view's update without waiting for it: its failure is said on the page, a stale
// answer is dropped, nothing is left uncaught.
function run(promise) {
  promise.catch((e) => {
    if (!(e instanceof Stale) && e.name !== "AbortError") say(e.message);
  });
}

function settings() {
  const num = (id) => ($(id).value === "" ? null : Number($(id).value));
  return {
    temperature: num("temperature") ?? 0.8, top_k: num("top_k"), top_p: num("top_p"),
    max_new_tokens: num("max_new_tokens") ?? 64, seed: num("seed") ?? 1337,
  };
}

function text(i = 0) {
  return $("prompt").value + (state.generated[i] || "");
}

// What the views ask about: the text, and whether it began at the start token (a generation
// from an empty prompt starts there, and its text does not show it).
function textBody() {
  const i = state.viewModel;
  return { prompt: text(i), start: state.fromStart, model: i, step: i === 0 ? state.step : null };
}

// ------------------------------------------------------------------- URL state, language

function saveUrl() {
  const s = settings();
  const params = new URLSearchParams({ prompt: $("prompt").value, layer: state.layer,
    head: state.head, lang: state.lang });
  for (const [k, v] of Object.entries(s)) if (v !== null) params.set(k, v);
  history.replaceState(null, "", "?" + params.toString());
}

function loadUrl() {
  const params = new URLSearchParams(location.search);
  if (params.has("prompt")) $("prompt").value = params.get("prompt");
  for (const id of ["temperature", "top_k", "top_p", "max_new_tokens", "seed"]) {
    if (params.has(id)) $(id).value = params.get(id);
  }
  const whole = (name) => { // a layer or head from the URL: a whole number >= 0, else 0
    const n = Number(params.get(name) || 0);
    return Number.isInteger(n) && n >= 0 ? n : 0;
  };
  state.layer = whole("layer");
  state.head = whole("head");
  state.lang = params.get("lang") === "zh" ? "zh" : "en";
}

function applyLanguage() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  $("lang").textContent = state.lang === "en" ? "中文" : "English";
  // § links: the guide in this language, opened at the section, in a new tab (the page and its
  // generated text stay)
  const guide = state.lang === "zh" ? "concepts.zh-CN.md" : "concepts.md";
  for (const el of document.querySelectorAll("a.doc")) {
    el.href = `/guide/${guide}#${el.dataset.doc}`;
    el.target = "_blank";
    el.rel = "noopener";
  }
}

function modelName() {
  if (!state.info) return;
  $("model-name").textContent = state.info.models.map((x) => t("model_line")(x)).join("  |  ");
}

// ------------------------------------------------------------------- tokens and generation

function panes() {
  const box = $("panes");
  box.innerHTML = "";
  state.info.models.forEach((m, i) => {
    const pane = document.createElement("div");
    pane.className = "pane";
    pane.id = `pane-${i}`;
    pane.innerHTML = `<h3>${escapeHtml(m.name)}</h3><div class="chips"></div>`;
    box.appendChild(pane);
  });
}

function escapeHtml(s) {
  return s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

function chip(piece, id, cls, index) {
  const el = document.createElement("span");
  el.className = `chip ${cls}`;
  el.style.setProperty("--h", (index * 47) % 360);
  el.textContent = piece;
  const sub = document.createElement("sub");
  sub.textContent = id;
  el.appendChild(sub);
  el.title = `#${index} id ${id}`;
  el.dataset.index = index;
  return el;
}

function showTokens(tokens) {
  state.tokens = tokens;
  const chips = document.querySelector(`#pane-${state.viewModel} .chips`);
  chips.innerHTML = "";
  const promptCount = state.promptCount ?? tokens.length;
  tokens.forEach((tok, i) => {
    const el = chip(tok.piece, tok.id, i < promptCount ? "prompt" : "new", i);
    if (i === state.position) el.classList.add("selected");
    if (i < state.offset) el.classList.add("outside"); // the model no longer reads it
    el.onclick = () => { if (chips.closest(".pane").id === `pane-${state.viewModel}`) selectPosition(i); };
    chips.appendChild(el);
  });
}

// A chip in model i's pane: in the pane the views are about, a click chooses its position.
function paneChip(i, piece, id, cls, index) {
  const el = chip(piece, id, cls, index);
  el.onclick = () => { if (i === state.viewModel) selectPosition(index); }; // (the other pane: no)
  return el;
}

async function generate() {
  if (state.generating) return; // one generation at a time: a second click waits for Stop
  state.generating = true;
  if (state.learnAbort) state.learnAbort.abort(); // the learn sample gives way
  state.epoch += 1;
  say("");
  const s = settings();
  state.generated = state.info.models.map(() => "");
  state.abort = new AbortController();
  $("go").disabled = $("analyse").disabled = true;
  $("stop").disabled = false;
  saveUrl();
  let started = false;
  try {
    // a prompt the model cannot read (too long, a character outside its vocabulary) stops
    // here with the server's reason, and the buttons come back
    state.fromStart = $("prompt").value === ""; // then the text follows the start token
    const first = await post("/api/tokenize", { prompt: $("prompt").value });
    started = true;
    state.promptCount = first.tokens.length;
    state.position = null;
    for (let i = 0; i < state.info.models.length; i++) { // each model's own tokens
      const mine = i === 0 ? first : await post("/api/tokenize", { prompt: $("prompt").value, model: i });
      const chips = document.querySelector(`#pane-${i} .chips`);
      chips.innerHTML = "";
      mine.tokens.forEach((tok, k) => chips.appendChild(paneChip(i, tok.piece, tok.id, "prompt", k)));
    }
    await Promise.all(state.info.models.map((_, i) => streamInto(i, s)));
  } catch (e) {
    if (e.name !== "AbortError" && !(e instanceof Stale)) say(e.message);
  } finally {
    $("go").disabled = $("analyse").disabled = false;
    $("stop").disabled = true;
    state.abort = null;
    state.generating = false;
  }
  if (started) await analyseOrSay();
  if (state.snapshots.length && !state.sampleDone) run(learnSample()); // it gave way
}

async function analyseOrSay() {
  try {
    await analyse();
  } catch (e) {
    if (!(e instanceof Stale)) say(e.message);
  }
}

async function streamInto(i, s) {
  const response = await fetch("/api/generate", {
    method: "POST", headers: { "content-type": "application/json" }, signal: state.abort.signal,
    body: JSON.stringify({ prompt: $("prompt").value, model: i, step: i === 0 ? state.step : null,
      ...s }),
  });
  if (!response.ok) {
    const message = serverSays((await response.json()).error);
    say(message);
    throw new Error(message);
  }
  let count = 0;
  await readEvents(response, (event) => {
    state.generated[i] += event.text || "";
    if (event.done) return;
    count += 1;
    const chips = document.querySelector(`#pane-${i} .chips`);
    chips.appendChild(paneChip(i, event.text, event.id, "new", chips.children.length));
    if (i === state.viewModel && count % 16 === 0) run(drawGrid()); // it grows with the text
  });
}

// The server-sent events of a generation, each handed to onEvent as it arrives.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
    }
  }
}

// A view's request number: only the answer to its latest request is drawn (the server may
// answer two requests of one view in either order).
const asked = {};
function ask(view) {
  const mine = (asked[view] = (asked[view] || 0) + 1);
  return () => asked[view] === mine;
}

// ------------------------------------------------------------------- the views

async function analyse() {
  saveUrl();
  const { step, ...body } = textBody(); // (the tokens are the same at every step)
  const tokenized = await post("/api/tokenize", body);
  state.offset = tokenized.window_start;
  const n = tokenized.tokens.length;
  if (state.position === null || state.position >= n || state.position < state.offset) {
    state.position = n - 1;
  }
  showTokens(tokenized.tokens); // (after the position: its chip is outlined)
  $("window-note").textContent = state.offset ? t("window_note")(n, n - state.offset, state.offset) : "";
  // (the server answers one at a time: the quick views first, the logit lens last)
  await Promise.all([nextTable(), drawBig(), steps(), embeddingsView(), residualView(), heads(),
    drawGrid(), lens()]);
}

function selectPosition(i) {
  if (i < state.offset) { // before the window the model reads: nothing to show there
    say(t("window_note")(state.tokens.length, state.tokens.length - state.offset, state.offset));
    return;
  }
  state.position = i;
  say("");
  for (const el of document.querySelectorAll(`#pane-${state.viewModel} .chip`)) {
    el.classList.toggle("selected", Number(el.dataset.index) === i);
  }
  run(nextTable());
  paintBig();
  shade();
  run(steps());
  run(embeddingsView());
  run(residualView());
  run(lens());
}

async function nextTable() {
  const s = settings();
  const latest = ask("next");
  const table = await post("/api/next", { ...textBody(), temperature: s.temperature,
    top_k: s.top_k, top_p: s.top_p, position: state.position, ablate: state.ablate });
  if (!latest()) return;
  state.results.next = table;
  const body = $("next-table").querySelector("tbody");
  body.innerHTML = "";
  for (const c of table.candidates) {
    const row = document.createElement("tr");
    const intact = c.p_intact === undefined ? "" // with heads off: the intact model's p
      : `<td>${c.p_intact.toFixed(4)} (${c.p >= c.p_intact ? "+" : ""}${change(c.p - c.p_intact)})</td>`;
    row.innerHTML = `<td class="chip">${escapeHtml(JSON.stringify(c.piece))}</td><td>${c.id}</td>` +
      `<td>${c.p.toFixed(4)}</td><td>${c.p_sampled.toFixed(4)}</td>${intact}`;
    row.onclick = () => continueWith(c.id);
    body.appendChild(row);
  }
  $("ablated").textContent = state.ablate.length
    ? `${t("ablated")} ${state.ablate.map(([l, h]) => `L${l}H${h}`).join(", ")}. ${t("ablated_note")}` : "";
  $("p-intact").hidden = !state.ablate.length;
}

// A change of probability, readable however small (+0.0123, -3.1e-5).
function change(d) {
  return Math.abs(d) >= 1e-3 || d === 0 ? d.toFixed(4) : d.toExponential(1);
}

// Continue from a candidate: the new prompt is the text of the ids up to the chosen position
// and the candidate's id, decoded together by the server (a token may be part of a character:
// its display text would destroy the prompt).
async function continueWith(id) {
  if (state.generating || state.continuing) return; // a click during a generation, or twice
  state.continuing = true;
  try {
    await continueFrom(id);
  } finally {
    state.continuing = false;
  }
}

async function continueFrom(id) {
  const from = state.fromStart ? 1 : 0; // the start token is not text: it stays out
  const ids = [...state.tokens.slice(from, state.position + 1).map((tk) => tk.id), id];
  let decoded;
  try {
    decoded = await post("/api/decode", { ids, model: state.viewModel });
  } catch (e) {
    if (!(e instanceof Stale)) say(e.message);
    return;
  }
  if (!decoded.whole) {
    say(t("partial"));
    return;
  }
  $("prompt").value = decoded.text;
  state.generated = [];
  state.fromStart = false;
  generate();
}

// A pointer event's place in the canvas's own pixels (on a phone the canvas is drawn smaller
// than its width: CSS max-width).
function canvasPoint(canvas, e) {
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
}

function decode(b64, n) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer, 0, n);
}

// A size x size map as pixels (one per weight, white to red, scaled to its largest weight),
// drawn enlarged at (x0, y0): a 1,024-token map is one putImageData, not a million rectangles.
// A weight's shade in [0, 1] under the chosen colour scale: linear up to the map's largest
// weight, or log over 4 decades below it (diffuse heads' small weights become visible).
function shadeOf(w, max) {
  if (state.scale !== "log") return Math.min(1, w / max);
  return w <= 0 ? 0 : Math.max(0, 1 + Math.log10(w / max) / 4);
}

function heat(ctx, weights, size, x0, y0, cell) {
  let max = 1e-9;
  for (let k = 0; k < size * size; k++) if (weights[k] > max) max = weights[k];
  const image = new ImageData(size, size);
  for (let k = 0; k < size * size; k++) {
    const w = shadeOf(weights[k], max);
    image.data[4 * k] = 255 - 75 * w;
    image.data[4 * k + 1] = 255 - 235 * w;
    image.data[4 * k + 2] = 255 - 235 * w;
    image.data[4 * k + 3] = 255;
  }
  const tile = document.createElement("canvas");
  tile.width = tile.height = size;
  tile.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(tile, x0, y0, size * cell, size * cell);
}

async function drawGrid() {
  const { n_layer, n_head } = model();
  const canvas = $("grid");
  const ctx = canvas.getContext("2d");
  const cell = Math.floor(canvas.width / Math.max(n_layer, n_head));
  const body = textBody();
  const drawing = (state.gridDrawing = {}); // a newer call takes over from an older one
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  state.gridThumbs = [];
  for (let layer = 0; layer < n_layer; layer++) { // one request per layer: rows appear in turn
    const data = await post("/api/attention", { ...body, layer, thumb: true });
    if (state.gridDrawing !== drawing) return;
    const [heads, size] = data.shape;
    const all = decode(data.weights_f32, heads * size * size);
    for (let h = 0; h < heads; h++) {
      const values = all.subarray(h * size * size, (h + 1) * size * size);
      heat(ctx, values, size, h * cell, layer * cell, (cell - 2) / size);
      state.gridThumbs.push([layer, h, size, values]);
    }
  }
  ctx.strokeStyle = "#06c";
  ctx.lineWidth = 2;
  ctx.strokeRect(state.head * cell, state.layer * cell, cell - 1, cell - 1);
  canvas.onclick = (e) => {
    const [x, y] = canvasPoint(canvas, e);
    const h = Math.floor(x / cell);
    const l = Math.floor(y / cell);
    if (h < n_head && l < n_layer) chooseHead(l, h);
  };
}

function chooseHead(layer, head) {
  state.layer = layer;
  state.head = head;
  $("layer").value = layer;
  $("head").value = head;
  saveUrl();
  run(drawBig());
  run(drawGrid());
  run(steps());
}

async function drawBig() {
  const latest = ask("big");
  const data = await post("/api/attention", { ...textBody(), layer: state.layer,
    head: state.head });
  if (!latest()) return;
  const T = data.tokens;
  const weights = decode(data.weights_f32, T * T);
  state.big = { T, weights };
  state.results.attention = { layer: state.layer, head: state.head, tokens: T,
    weights: Array.from(weights) };
  const canvas = $("big");
  const cell = (canvas.width - MARGIN) / T;
  paintBig();
  canvas.onpointermove = canvas.onpointerdown = (e) => { // a mouse, or a finger on a phone
    const [x, y] = canvasPoint(canvas, e);
    const j = Math.floor((x - MARGIN) / cell);
    const i = Math.floor((y - MARGIN) / cell);
    if (i < 0 || j < 0 || i >= T || j >= T) return;
    const o = state.offset; // row and column k are token o + k of the text
    const piece = (k) => JSON.stringify(state.tokens[o + k] ? state.tokens[o + k].piece : "?");
    $("readout").textContent = t("readout")(`#${o + i} ${piece(i)}`, `#${o + j} ${piece(j)}`,
      j > i ? t("masked") : weights[i * T + j].toFixed(4)); // the future is masked, not 0
  };
  canvas.onclick = (e) => {
    const i = Math.floor((canvasPoint(canvas, e)[1] - MARGIN) / cell);
    if (i >= 0 && i < T) selectPosition(state.offset + i);
  };
  shade();
}

const MARGIN = 60; // room for the tokens' labels left of and above the big map

// The chosen head's map on a canvas: queries down the left, keys along the top (their tokens,
// or every few positions' numbers where cells are small), the chosen query's row outlined
// (not on a downloaded picture).
function paintMap(canvas, outline = true) {
  const { T, weights } = state.big;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const cell = (canvas.width - MARGIN) / T;
  heat(ctx, weights, T, MARGIN, MARGIN, cell);
  ctx.fillStyle = "#333";
  ctx.font = `${Math.max(8, Math.min(12, Math.floor(cell)))}px monospace`;
  const every = Math.ceil(9 / cell); // a label per 9 pixels at most
  const o = state.offset;
  for (let k = 0; k < T; k += every) {
    const tok = state.tokens[o + k];
    const label = every === 1 && tok ? visible(tok.piece).slice(0, 6) : `${o + k}`;
    ctx.textAlign = "right";
    ctx.fillText(label, MARGIN - 3, MARGIN + (k + 0.8) * cell);
    ctx.save();
    ctx.translate(MARGIN + (k + 0.8) * cell, MARGIN - 3);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    ctx.fillText(label, 0, 0);
    ctx.restore();
  }
  ctx.textAlign = "left";
  ctx.fillText(t("keys_queries"), 2, 10);
  const q = state.position === null ? -1 : state.position - o;
  if (outline && q >= 0 && q < T) {
    ctx.strokeStyle = "#06c";
    ctx.lineWidth = 2;
    ctx.strokeRect(MARGIN + 1, MARGIN + q * cell + 1, T * cell - 2, Math.max(cell - 2, 1));
  }
}

function paintBig() {
  if (!state.big) return;
  paintMap($("big"));
  colourBar($("colour-bar"), state.big.weights);
}

// White to red, with the weights the ends stand for (and the middle, on a log scale).
function colourBar(canvas, weights) {
  let max = 1e-9;
  for (const w of weights) if (w > max) max = w;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const x0 = MARGIN, width = canvas.width - MARGIN - 10;
  for (let i = 0; i < width; i++) {
    const w = i / (width - 1);
    ctx.fillStyle = `rgb(${255 - 75 * w}, ${255 - 235 * w}, ${255 - 235 * w})`;
    ctx.fillRect(x0 + i, 2, 1, 12);
  }
  ctx.fillStyle = "#333";
  ctx.font = "10px sans-serif";
  const low = state.scale === "log" ? (max / 1e4).toExponential(0) : "0";
  ctx.fillText(low, x0, 26);
  ctx.fillText(max.toFixed(4), x0 + width - 30, 26);
  if (state.scale === "log") ctx.fillText((max / 100).toExponential(0), x0 + width / 2 - 10, 26);
  ctx.fillText(t("masked_white"), x0, 38);
}

// A token's text with its whitespace drawn (·, ↵, →), so that a space is seen.
function visible(piece) {
  return piece.replace(/ /g, "·").replace(/\n/g, "↵").replace(/\t/g, "→");
}

function shade() {
  const box = $("shade");
  box.innerHTML = "";
  if (!state.big || state.position === null) return;
  const { T, weights } = state.big;
  const q = Math.min(state.position - state.offset, T - 1); // in the window
  state.tokens.forEach((tok, k) => {
    const j = k - state.offset; // < 0: before the window, not read
    const span = document.createElement("span");
    // whitespace drawn visibly, so that weight on a space or a newline can be seen
    span.textContent = tok.piece.replace(/ /g, "·").replace(/\n/g, "↵\n").replace(/\t/g, "→");
    const w = j >= 0 && j <= q ? weights[q * T + j] : 0;
    span.style.background = `rgba(180, 20, 20, ${w})`;
    span.title = j < 0 ? t("outside") : w.toFixed(4);
    if (j < 0) span.style.color = "#aaa";
    if (j === q) span.style.outline = "1px solid #c00";
    box.appendChild(span);
  });
}

async function steps() {
  if (state.position === null) return;
  const latest = ask("steps");
  const data = await post("/api/steps", { ...textBody(), layer: state.layer, head: state.head,
    position: state.position });
  if (!latest()) return;
  state.results.steps = data;
  const T = data.tokens.length;
  const row = (name) => decode(data.steps[name].f32, T);
  const rows = [row("scores"), row("scaled"), row("masked"), row("weights")];
  const m = model();
  const sizes = { layer: data.layer, head: data.head, C: m.n_embd, nh: m.n_head,
    hs: m.n_embd / m.n_head };
  $("steps-shapes").textContent = t("steps_shapes")(sizes, T, data.position);
  const q = data.position - data.offset; // the query's column in the window
  let html = `<tr><th>${t("key")}</th>` + data.tokens.map((tk, j) =>
    `<th${j === q ? ' class="query"' : ""}>#${data.offset + j} ${escapeHtml(JSON.stringify(tk.piece))}</th>`).join("") + "</tr>";
  rows.forEach((values, r) => {
    html += `<tr><th>${t("steps_rows")[r]}</th>` + Array.from(values, (v, j) => {
      const future = j > q; // masked: also where softmax gives it exactly 0
      const cell = future && r >= 2 ? t("masked") : v.toFixed(4);
      const shade = r === 3 ? ` style="background: rgba(180, 20, 20, ${v})"` : "";
      return `<td${shade}${j === q ? ' class="query"' : ""}>${cell}</td>`;
    }).join("") + "</tr>";
  });
  $("steps-table").innerHTML = html;
  const hs = sizes.hs;
  for (const name of ["q", "k", "v"]) { // this head's vectors at every position, as pictures
    const values = decode(data.steps[name].f32, T * hs);
    diverging($(`${name}-map`), values, T, hs, q);
  }
  const C = sizes.C;
  const at = (name, n) => decode(data.steps[name].f32, data.steps[name].shape.reduce((a, b) => a * b))
    .subarray(n === C ? q * C : 0, (n === C ? q * C : 0) + n); // a (T, C) field: the query's row
  const vectors = [["x", at("x", C)], ["ln_1(x)", at("ln_1", C)],
    ["q", decode(data.steps.q.f32, T * hs).subarray(q * hs, (q + 1) * hs)],
    ["weights · v", decode(data.steps.head_out.f32, hs)],
    [t("all_heads")(sizes.nh, C), decode(data.steps.heads.f32, C)],
    [t("c_proj_out"), decode(data.steps.attn_out.f32, C)]];
  const box = $("step-vectors");
  box.innerHTML = "";
  for (const [name, values] of vectors) {
    const cell = document.createElement("div");
    cell.innerHTML = `<p class="hint">${escapeHtml(name)} (${values.length})</p>`;
    const canvas = document.createElement("canvas");
    canvas.width = 180;
    canvas.height = 60;
    cell.appendChild(canvas);
    box.appendChild(cell);
    bars(canvas, values, Math.max(...Array.from(values, Math.abs), 1e-9));
  }
  showColumn($("steps-table"), "th.query");
}

// Scroll a wide table's box so that the chosen column is in view.
function showColumn(table, selector) {
  const cell = table.querySelector(selector);
  const box = table.parentElement;
  if (cell && box) box.scrollLeft = Math.max(0, cell.offsetLeft - box.clientWidth / 2);
}

// The logit lens at most 48 positions around the chosen token (each position costs n_layer + 1
// products with the whole vocabulary): asked for again when the position changes.
async function lens() {
  const latest = ask("lens");
  const data = await post("/api/lens", { ...textBody(), position: state.position });
  if (!latest()) return;
  state.results.lens = data;
  lensTable(data);
}

function lensTable(data) {
  const { rows, first } = data; // rows[l][k] is about token first + k of the text
  const shown = rows[0].length;
  const T = state.tokens.length - state.offset; // the positions the model reads
  const at = (state.position ?? state.tokens.length - 1) - first;
  $("lens-window").textContent = T > shown
    ? t("lens_window")(first, first + shown - 1, state.tokens.length) : "";
  const mark = (k) => (k === at ? ' class="query"' : "");
  let html = "<tr><th></th>" + state.tokens.slice(first, first + shown).map((tk, k) =>
    `<th${mark(k)}>${escapeHtml(JSON.stringify(tk.piece))}</th>`).join("") + "</tr>";
  rows.forEach((row, layer) => {
    const name = layer === 0 ? t("embeddings") : `${t("layer")} ${layer - 1}`;
    html += `<tr><th>${name}</th>` + row.map((c, k) =>
      `<td${mark(k)} style="background: rgba(20, 100, 200, ${c.p})" title="p ${c.p}">` +
      `${escapeHtml(JSON.stringify(c.piece))}</td>`).join("") + "</tr>";
  });
  $("lens-table").innerHTML = html;
  showColumn($("lens-table"), "th.query");
}

async function heads() {
  if (state.tokens.length < 2) return;
  const data = await post("/api/heads", textBody());
  state.results.heads = data.heads;
  renderHeads();
}

function renderHeads() {
  const rows = [...(state.results.heads || [])];
  const key = state.sortKey;
  const sign = state.sortDown ? -1 : 1; // layer and head start ascending, the scores descending
  rows.sort((a, b) => sign * (a[key] - b[key]));
  for (const th of document.querySelectorAll("#heads-table th[data-key]")) {
    th.dataset.sorted = th.dataset.key === key ? (state.sortDown ? "down" : "up") : "";
  }
  const body = $("heads-table").querySelector("tbody");
  body.innerHTML = "";
  for (const r of rows) {
    const tr = document.createElement("tr");
    const off = state.ablate.some(([l, h]) => l === r.layer && h === r.head);
    tr.innerHTML = `<td>${r.layer}</td><td>${r.head}</td><td>${r.entropy.toFixed(3)}</td>` +
      `<td>${r.prev.toFixed(3)}</td><td>${r.sink.toFixed(3)}</td>` +
      `<td>${r.induction.toFixed(3)}</td><td><input type="checkbox" ${off ? "checked" : ""}></td>`;
    tr.onclick = (e) => {
      if (e.target.tagName === "INPUT") {
        state.ablate = state.ablate.filter(([l, h]) => !(l === r.layer && h === r.head));
        if (e.target.checked) state.ablate.push([r.layer, r.head]);
        run(nextTable());
      } else {
        chooseHead(r.layer, r.head);
      }
    };
    body.appendChild(tr);
  }
}

// ------------------------------------------------------------------- pictures of numbers

// rows x cols values on a canvas, blue below 0, white at 0, red above, scaled to the largest
// magnitude (or to `limit`); the row `mark` is outlined.
function diverging(canvas, values, rows, cols, mark = -1, limit = null) {
  let max = limit || 1e-9;
  if (!limit) for (const v of values) if (Math.abs(v) > max) max = Math.abs(v);
  const image = new ImageData(cols, rows);
  for (let k = 0; k < rows * cols; k++) {
    const w = Math.max(-1, Math.min(1, values[k] / max));
    const fade = Math.round(255 * (1 - Math.abs(w)));
    image.data[4 * k] = w > 0 ? 255 : fade;
    image.data[4 * k + 1] = fade;
    image.data[4 * k + 2] = w < 0 ? 255 : fade;
    image.data[4 * k + 3] = 255;
  }
  const tile = document.createElement("canvas");
  tile.width = cols;
  tile.height = rows;
  tile.getContext("2d").putImageData(image, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(tile, 0, 0, canvas.width, canvas.height);
  if (mark >= 0) {
    const h = canvas.height / rows;
    ctx.strokeStyle = "#0a0";
    ctx.lineWidth = 2;
    ctx.strokeRect(1, mark * h, canvas.width - 2, Math.max(h, 2));
  }
  canvas.title = `${rows} × ${cols}, |max| ${max.toFixed(4)}`;
}

// A vector as bars around a zero line.
function bars(canvas, values, limit) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = "#eee";
  ctx.fillRect(0, height / 2, width, 1);
  const w = width / values.length;
  values.forEach((v, i) => {
    const h = Math.max(-1, Math.min(1, v / limit)) * (height / 2 - 2);
    ctx.fillStyle = v >= 0 ? "#c33" : "#36c";
    ctx.fillRect(i * w, height / 2 - Math.max(h, 0), Math.max(w - (w > 3 ? 1 : 0), 1), Math.abs(h));
  });
  canvas.title = t("bars_title")(values.length, limit);
}

// ------------------------------------------------------------------- the model, drawn

async function diagram() {
  const data = await post("/api/model", { model: state.viewModel });
  const count = (prefix) => data.tensors.filter((x) => x.name.startsWith(prefix) && !x.tied_to &&
    !x.name.endsWith(".scale")).reduce((a, x) => a + x.count, 0); // (int8 scales: not parameters)
  const C = data.n_embd, V = data.vocab_size, B = data.block_size, nh = data.n_head;
  const hs = data.head_size, L = data.n_layer;
  const n = (x) => x.toLocaleString();
  const part = (name, shape, params, target, note = "") =>
    `<button type="button" class="part" data-target="${target}" title="${escapeHtml(note)}">` +
    `<b>${name}</b> <span>${shape}</span>` +
    (params === null ? "" : `<small>${n(params)} ${t("params")}</small>`) +
    (note ? `<small>${escapeHtml(note)}</small>` : "") + "</button>";
  const arrow = '<span class="arrow">↓</span>';
  const h0 = "transformer.h.0.";
  const tiedHead = data.tensors.some((x) => x.name === "lm_head.weight" && x.tied_to);
  const int8Head = data.tensors.some((x) => x.name === "lm_head.weight_int8");
  $("diagram").innerHTML = [
    part("ids", "(T)", null, "generate-view"),
    arrow,
    `<div class="row">${part("wte", `(${n(V)}, ${C})`, count("transformer.wte."), "embeddings-view")}` +
    `<span>+</span>${part("wpe", `(${n(B)}, ${C})`, count("transformer.wpe."), "embeddings-view")}</div>`,
    arrow,
    `<div class="block"><p class="hint">${t("block_repeat")(L)}</p>`,
    part("ln_1", `(${C}) ${t("gain_bias")}`, count(h0 + "ln_1.") * L, "residual-view"),
    arrow,
    part("c_attn", `(${C}, ${3 * C}) → q, k, v: ${nh} × (T, ${C} / ${nh} = ${hs})`, count(h0 + "attn.c_attn.") * L, "steps-view"),
    arrow,
    part("q · kᵀ / √" + hs, `(${nh}, T, T), ${t("masked")} → softmax`, null, "attention-view"),
    arrow,
    part("· v", `(${nh}, T, ${hs}) → (T, ${C})`, null, "steps-view"),
    arrow,
    part("c_proj", `(${C}, ${C}), + x`, count(h0 + "attn.c_proj.") * L, "residual-view"),
    arrow,
    part("ln_2", `(${C}) ${t("gain_bias")}`, count(h0 + "ln_2.") * L, "residual-view"),
    arrow,
    part("MLP", `c_fc (${C}, ${4 * C}) → GELU → c_proj (${4 * C}, ${C}), + x`, count(h0 + "mlp.") * L, "residual-view"),
    "</div>",
    arrow,
    part("ln_f", `(${C}) ${t("gain_bias")}`, count("transformer.ln_f."), "lens-view"),
    arrow,
    part("lm_head", `(${C}, ${n(V)})`, tiedHead || int8Head ? null : count("lm_head."), "next-view",
      tiedHead ? t("tied") : int8Head ? t("int8_head") : ""),
    arrow,
    part("logits → softmax", `(T, ${n(V)})`, null, "next-view"),
    `<p class="hint">${n(data.parameters)} ${t("params")}, ` +
      `${data.quantized ? `${data.quantized} → ` : ""}${data.dtype}</p>`,
  ].join("");
  for (const el of document.querySelectorAll("#diagram .part")) {
    el.onclick = () => focusView(el.dataset.target);
  }
}

function focusView(id) {
  const view = $(id);
  const top = view.getBoundingClientRect().top + window.scrollY - $("tour").offsetHeight - 8;
  window.scrollTo({ top, behavior: "smooth" }); // (below the tour bar, whatever its height)
  for (const el of document.querySelectorAll("section.focus")) el.classList.remove("focus");
  view.classList.add("focus");
}

// ------------------------------------------------------------------- embeddings

async function embeddingsView() {
  if (state.position === null || !state.tokens[state.position]) return;
  const token = state.tokens[state.position].id;
  const latest = ask("embeddings");
  const data = await post("/api/embeddings", { ...textBody(), token });
  if (!latest()) return;
  state.results.embeddings = { token: data.token, nearest: data.nearest, pca: data.pca };
  $("embeddings-token").textContent = t("embeddings_token")(JSON.stringify(data.token.piece), token);
  $("nearest-table").innerHTML = `<tr><th>${t("token")}</th><th>id</th><th>cos</th></tr>` +
    data.nearest.map((c) => `<tr><td class="chip">${escapeHtml(JSON.stringify(c.piece))}</td>` +
      `<td>${c.id}</td><td>${c.cosine.toFixed(4)}</td></tr>`).join("");
  const points = data.pca.points;
  $("pca-hint").textContent = t("pca_hint")(data.pca.explained, points.length);
  const canvas = $("pca");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const px = (x) => 20 + (x - x0) / (x1 - x0 || 1) * (canvas.width - 60);
  const py = (y) => canvas.height - 15 - (y - y0) / (y1 - y0 || 1) * (canvas.height - 30);
  ctx.font = "11px monospace";
  for (const p of [...points].sort((a, b) => a.in_text - b.in_text)) { // the text's on top
    const chosen = p.id === token;
    ctx.fillStyle = chosen ? "#0a0" : p.in_text ? "#c00" : "#999";
    ctx.fillRect(px(p.x) - 2, py(p.y) - 2, chosen ? 6 : 4, chosen ? 6 : 4);
    if (p.in_text || points.length <= 100) ctx.fillText(JSON.stringify(p.piece).slice(1, -1), px(p.x) + 4, py(p.y) + 4);
  }
  const S = data.positions.length;
  diverging($("wpe"), decode(data.wpe.f32, S * data.wpe.shape[1]), S, data.wpe.shape[1]);
  diverging($("wpe-sim"), decode(data.wpe_similarity.f32, S * S), S, S, -1, 1);
  diverging($("sin-sim"), decode(data.sinusoid_similarity.f32, S * S), S, S, -1, 1);
  $("positions-note").textContent = t("positions_note")(S, model().block_size);
}

// ------------------------------------------------------------------- residual stream

async function residualView() {
  if (state.position === null) return;
  const [layer, norm] = ($("ln-layer").value || "0:ln_1").split(":");
  const latest = ask("residual");
  const data = await post("/api/residual", { ...textBody(), layer: Number(layer), norm,
    position: state.position });
  if (!latest()) return;
  const T = data.norms.shape[1];
  const L = data.attn.shape[0];
  const norms = decode(data.norms.f32, (L + 1) * T);
  const attn = decode(data.attn.f32, L * T), mlp = decode(data.mlp.f32, L * T);
  state.results.residual = { layer, position: data.position, mean: data.mean, var: data.var };
  const o = data.offset;
  const at = data.position - o;
  const shown = 48; // as the lens: the positions around the chosen one
  const first = Math.max(0, Math.min(at - shown / 2, T - shown));
  const last = Math.min(T, first + shown);
  let max = 1e-9;
  for (const v of norms) max = Math.max(max, v);
  const mark = (j) => (j === at ? ' class="query"' : "");
  const row = (name, values, r) => `<tr><th>${name}</th>` + Array.from(
    values.subarray(r * T + first, r * T + last), (v, k) =>
      `<td${mark(first + k)} style="background: rgba(20, 100, 200, ${Math.min(1, v / max) * 0.8})">${v.toFixed(1)}</td>`).join("") + "</tr>";
  let html = "<tr><th></th>" + state.tokens.slice(o + first, o + last).map((tk, k) =>
    `<th${mark(first + k)}>${escapeHtml(JSON.stringify(tk.piece))}</th>`).join("") + "</tr>";
  html += row(t("embeddings"), norms, 0);
  for (let l = 0; l < L; l++) {
    const [a, m, after] = t("rows_residual")(l);
    html += row(a, attn, l) + row(m, mlp, l) + row(after, norms, l + 1);
  }
  $("residual-table").innerHTML = html;
  showColumn($("residual-table"), "th.query");
  const C = data.x.shape[0];
  const x = decode(data.x.f32, C), normalized = decode(data.normalized.f32, C);
  const out = decode(data.out.f32, C);
  const mean = normalized.reduce((a, v) => a + v, 0) / C;
  const variance = normalized.reduce((a, v) => a + (v - mean) ** 2, 0) / C;
  $("ln-numbers").textContent = t("ln_numbers")(data, mean, variance);
  const big = (v) => Math.max(...Array.from(v, Math.abs), 1e-9);
  bars($("ln-x"), x, big(x));
  bars($("ln-n"), normalized, big(normalized));
  bars($("ln-out"), out, big(out));
  $("mlp-bars").hidden = !data.mlp_hidden; // ln_2: and the MLP that reads its output
  if (data.mlp_hidden) {
    const hidden = decode(data.mlp_hidden.f32, 4 * C), mlpOut = decode(data.mlp_out.f32, C);
    $("mlp-hidden-label").textContent = `${t("mlp_hidden")} (${4 * C})`;
    $("mlp-out-label").textContent = `${t("mlp_out")} (${C})`;
    bars($("mlp-hidden"), hidden, big(hidden));
    bars($("mlp-out"), mlpOut, big(mlpOut));
  }
}

// ------------------------------------------------------------------- watch it learn

async function snapshots() {
  const data = await post("/api/snapshots", { model: 0 });
  state.snapshots = data.steps;
  state.losses = data.losses;
  $("learn-view").hidden = !data.steps.length;
  if (!data.steps.length) return;
  const slider = $("step");
  slider.max = data.steps.length; // the last place: the final weights
  slider.value = data.steps.length;
  slider.oninput = () => stepLabel();
  slider.onchange = () => chooseStep();
  stepLabel();
  drawLoss();
}

function chosenSnapshot() {
  const i = Number($("step").value);
  return i < state.snapshots.length ? state.snapshots[i] : null;
}

function stepLabel() {
  $("step-label").textContent = t("step_label")(chosenSnapshot(), state.snapshots.length);
  drawLoss();
}

function chooseStep() {
  if (state.generating || state.viewModel !== 0) { // a generation keeps its weights
    $("step").value = state.step === null ? state.snapshots.length
      : state.snapshots.findIndex((s) => s.step === state.step);
    stepLabel();
    say(t(state.generating ? "wait_generation" : "step_other_model"));
    return;
  }
  const s = chosenSnapshot();
  stepLabel();
  state.step = s === null ? null : s.step;
  state.epoch += 1; // the views are about other weights now
  say("");
  run(analyse());
  run(learnSample());
}

function drawLoss() {
  const canvas = $("loss");
  const ctx = canvas.getContext("2d");
  const rows = (state.losses || []).filter((r) => r.val_loss != null);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!rows.length) return;
  const last = Math.max(...state.snapshots.map((s) => s.step), ...rows.map((r) => r.step));
  const values = rows.flatMap((r) => [r.train_loss, r.val_loss]);
  const lo = Math.min(...values), hi = Math.max(...values);
  const px = (step) => 30 + step / (last || 1) * (canvas.width - 40);
  const py = (v) => 10 + (hi - v) / (hi - lo || 1) * (canvas.height - 30);
  ctx.font = "10px sans-serif";
  ctx.fillStyle = "#666";
  ctx.fillText(hi.toFixed(2), 0, 14);
  ctx.fillText(lo.toFixed(2), 0, canvas.height - 18);
  ctx.fillText(t("loss_legend"), 30, canvas.height - 4);
  for (const [key, colour] of [["train_loss", "#aaa"], ["val_loss", "#06c"]]) {
    ctx.strokeStyle = colour;
    ctx.beginPath();
    rows.forEach((r, k) => (k ? ctx.lineTo : ctx.moveTo).call(ctx, px(r.step), py(r[key])));
    ctx.stroke();
  }
  const s = chosenSnapshot();
  const x = px(s === null ? last : s.step);
  ctx.strokeStyle = "#c00";
  ctx.beginPath();
  ctx.moveTo(x, 5);
  ctx.lineTo(x, canvas.height - 20);
  ctx.stroke();
}

// A sample with the chosen step's weights, below the loss curve. It gives way to Generate
// (which stops it) and waits while the server's generation slots are busy.
async function learnSample() {
  if (state.learnAbort) state.learnAbort.abort();
  const abort = (state.learnAbort = new AbortController());
  const box = $("learn-sample");
  box.textContent = "";
  state.sampleDone = false;
  for (let tries = 0; ; tries++) {
    if (state.generating) return; // (Generate draws the next sample when it ends)
    const response = await fetch("/api/generate", {
      method: "POST", headers: { "content-type": "application/json" }, signal: abort.signal,
      body: JSON.stringify({ prompt: "", step: state.step, temperature: 0.8, seed: 1337,
        max_new_tokens: Math.min(200, state.info.models[0].block_size) }),
    });
    if (response.status === 429 && tries < 20) { // a slot frees when a stopped stream ends
      await new Promise((resolve) => setTimeout(resolve, 250));
      continue;
    }
    if (!response.ok) throw new Error(serverSays((await response.json()).error));
    await readEvents(response, (event) => { box.textContent += event.text || ""; });
    state.sampleDone = !abort.signal.aborted;
    return;
  }
}

// ------------------------------------------------------------------- the tour

function tour() {
  const steps = t("tour_steps");
  const k = state.tour;
  $("tour-steps").innerHTML = `<b>${t("tour")}</b> ` + steps.map(([, , name], i) =>
    `<button type="button" data-k="${i}"${i === k ? ' class="current"' : ""}>${i + 1}. ${escapeHtml(name)}</button>`).join("");
  for (const el of document.querySelectorAll("#tour-steps button")) {
    el.onclick = () => { state.tour = Number(el.dataset.k); tour(); focusView(steps[state.tour][0]); };
  }
  const [, doc, , words] = steps[k];
  const guide = state.lang === "zh" ? "concepts.zh-CN.md" : "concepts.md";
  $("tour-text").innerHTML = `${escapeHtml(words)} <a class="doc" target="_blank" rel="noopener" href="/guide/${guide}#${doc}">§${doc}</a>`;
  $("tour-prev").disabled = k === 0;
  $("tour-next").disabled = k === steps.length - 1;
}

function tourMove(by) {
  const steps = t("tour_steps");
  state.tour = Math.max(0, Math.min(steps.length - 1, state.tour + by));
  tour();
  focusView(steps[state.tour][0]);
}

// ------------------------------------------------------------------- which model

// The selectors follow the model the views are about (a --compare model may have other sizes).
function modelControls() {
  const m = model();
  for (const [id, n] of [["layer", m.n_layer], ["head", m.n_head]]) {
    $(id).innerHTML = Array.from({ length: n }, (_, i) => `<option>${i}</option>`).join("");
  }
  state.layer = Math.min(state.layer, m.n_layer - 1);
  state.head = Math.min(state.head, m.n_head - 1);
  $("layer").value = state.layer;
  $("head").value = state.head;
  const keep = $("ln-layer").value || "0:ln_1";
  const options = [];
  for (let l = 0; l <= m.n_layer; l++) {
    for (const norm of l < m.n_layer ? ["ln_1", "ln_2"] : ["ln_1"]) {
      options.push(`<option value="${l}:${norm}">${escapeHtml(t("ln_option")(l, m.n_layer, norm))}</option>`);
    }
  }
  $("ln-layer").innerHTML = options.join("");
  $("ln-layer").value = keep;
  if (!$("ln-layer").value) $("ln-layer").value = "0:ln_1"; // (a model with fewer layers)
}

function chooseViewModel(i) {
  if (state.generating) { $("view-model").value = state.viewModel; say(t("wait_generation")); return; }
  state.viewModel = i;
  $("step").disabled = i !== 0; // the snapshots are model 0's
  state.epoch += 1;
  state.position = null;
  state.results = {};
  for (const el of document.querySelectorAll(".pane")) el.classList.toggle("viewed", el.id === `pane-${i}`);
  for (const el of document.querySelectorAll(".chip.selected")) el.classList.remove("selected");
  modelControls();
  run(diagram());
  run(analyse());
}

// The big map as a picture to keep: white, labelled, its colour bar and a title under it, no
// selection outline.
function bigPicture() {
  const out = document.createElement("canvas");
  out.width = 800;
  out.height = 800 + 64;
  paintMap(out, false);
  const bar = document.createElement("canvas");
  bar.width = 800;
  bar.height = 42;
  colourBar(bar, state.big.weights);
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 800, 800, 64);
  ctx.drawImage(bar, 0, 800);
  ctx.fillStyle = "#333";
  ctx.font = "12px sans-serif";
  ctx.fillText(`${model().name}: layer ${state.layer}, head ${state.head}` +
    (state.step === null ? "" : `, step ${state.step}`), MARGIN, 858);
  return out;
}

// Every head's thumbnail on white, labelled L (layer) and H (head), without the selection box.
function gridPicture() {
  const grid = $("grid");
  const { n_layer, n_head } = model();
  const cell = Math.floor(grid.width / Math.max(n_layer, n_head));
  const pad = 24;
  const out = document.createElement("canvas");
  out.width = n_head * cell + pad;
  out.height = n_layer * cell + pad;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, out.width, out.height);
  const thumbs = state.gridThumbs || [];
  thumbs.forEach(([layer, h, size, values]) =>
    heat(ctx, values, size, pad + h * cell, pad + layer * cell, (cell - 2) / size));
  ctx.fillStyle = "#333";
  ctx.font = "11px sans-serif";
  for (let h = 0; h < n_head; h++) ctx.fillText(`H${h}`, pad + h * cell + 2, 14);
  for (let l = 0; l < n_layer; l++) ctx.fillText(`L${l}`, 2, pad + l * cell + 14);
  return out;
}

function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// ------------------------------------------------------------------- start

async function start() {
  loadUrl();
  applyLanguage();
  state.info = await (await fetch("/api/info")).json();
  const m = state.info.models[0];
  modelName();
  modelControls();
  $("max_new_tokens").max = m.block_size; // the server's limit, shown before a click
  $("ln-layer").onchange = () => run(residualView());
  $("tour-prev").onclick = () => tourMove(-1);
  $("tour-next").onclick = () => tourMove(1);
  if (state.info.models.length > 1) {
    $("view-model-label").hidden = false;
    $("view-model").innerHTML = state.info.models.map((x, i) =>
      `<option value="${i}">${i}: ${escapeHtml(x.name)}</option>`).join("");
    $("view-model").onchange = () => chooseViewModel(Number($("view-model").value));
  }
  tour();
  run(diagram());
  const learning = snapshots();
  $("layer").onchange = () => chooseHead(Number($("layer").value), state.head);
  $("head").onchange = () => chooseHead(state.layer, Number($("head").value));
  $("go").onclick = generate;
  $("stop").onclick = () => state.abort && state.abort.abort();
  $("analyse").onclick = () => {
    if (state.generating) return;
    state.epoch += 1;
    say("");
    state.generated = [];
    state.promptCount = null;
    state.fromStart = false;
    state.position = null; // a new text: the views start at its last token
    analyseOrSay().then(() => { if ($("prompt").value === "") say(t("empty_prompt")); });
  };
  $("lang").onclick = () => {
    state.lang = state.lang === "en" ? "zh" : "en";
    applyLanguage();
    modelName();
    renderHeads();
    run(steps());
    run(nextTable()); // (its "switched off" line)
    paintBig();
    shade();
    if (state.tokens.length && state.offset) {
      const n = state.tokens.length;
      $("window-note").textContent = t("window_note")(n, n - state.offset, state.offset);
    }
    say("");
    run(diagram());
    run(residualView());
    run(embeddingsView());
    tour();
    const ln = $("ln-layer").value;
    modelControls();
    $("ln-layer").value = ln;
    if (state.snapshots.length) stepLabel();
    if (state.results.lens) lensTable(state.results.lens);
    saveUrl();
  };
  $("download-png").onclick = () => bigPicture().toBlob((b) =>
    download(`attention-layer${state.layer}-head${state.head}.png`, b));
  $("download-grid").onclick = () => gridPicture().toBlob((b) => download("attention-grid.png", b));
  $("scale").onchange = () => { state.scale = $("scale").value; paintBig(); run(drawGrid()); };
  $("download-json").onclick = () => download("gptlab-analysis.json", new Blob([JSON.stringify({
    model: model().name, step: state.step, text: text(state.viewModel), settings: settings(),
    position: state.position,
    tokens: state.tokens, ablate: state.ablate, ...state.results,
  }, null, 1)], { type: "application/json" }));
  for (const th of document.querySelectorAll("#heads-table th[data-key]")) {
    th.onclick = () => { // a second click on the same column turns the order round
      const again = state.sortKey === th.dataset.key;
      state.sortDown = again ? !state.sortDown : !["layer", "head"].includes(th.dataset.key);
      state.sortKey = th.dataset.key;
      renderHeads();
    };
  }
  panes();
  document.querySelector("#pane-0").classList.add("viewed");
  await analyseOrSay();
  run(learning.then(() => state.snapshots.length && learnSample())); // after the first views
  document.body.dataset.ready = "1"; // for tests: the first analysis is drawn
}

start();
