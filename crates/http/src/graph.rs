//! The Graph tab's layout: a layered (Sugiyama-style) drawing of the DAG, left to right as in
//! Airflow, computed on the server so the page needs no layout library.
//!
//! 1. Layers: each task's longest path from a root (tasks come topologically ordered).
//! 2. Edges spanning several layers get a virtual point per layer in between, so they route
//!    around the nodes instead of through them. A via point is drawn inside the task groups
//!    of its edge's source while they reach that far, then inside the target's (`via_owner`).
//! 3. Order within layers: barycenter sweeps down and up, which removes most crossings. Slots
//!    compare by their groups' keys first (the mean position of all a group's slots, one key
//!    for every layer), so a group's slots stay together, in the same order in every layer.
//! 4. Coordinates: layers as columns as wide as their widest label. Each group is one
//!    rectangle over the layers it spans: its contents stacked by the same rules as the top
//!    level, plus padding and room for its label. A "skyline" puts each rectangle at its
//!    wanted height (each layer centred, as before) or just below what is already placed in
//!    those layers, so group boxes never overlap each other or nodes outside them.
//!
//! The result is plain numbers and strings; the template draws the SVG (and escapes).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use flow_dag::Dag;

const NODE_H: f64 = 28.0;
const ROW_GAP: f64 = 14.0;
/// Distance between the centres of two neighbouring nodes of a layer.
const ROW: f64 = NODE_H + ROW_GAP;
const COL_GAP: f64 = 70.0;
const CHAR_W: f64 = 7.2;
const PAD: f64 = 20.0;
/// Room above a group's members for its label, which the template draws at y + 12.
const GROUP_TOP: f64 = 22.0;
const GROUP_BOTTOM: f64 = 10.0;
/// Margin left and right of a box per nesting level below it, so a parent's box is wider
/// than its children's even where they span the same columns.
const GROUP_SIDE: f64 = 10.0;
/// The least space between boxes in neighbouring columns.
const BOX_GAP: f64 = 20.0;
const SWEEPS: usize = 8;

pub struct GraphNode {
    pub task_id: String,
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub state: String,
}

pub struct GraphGroup {
    pub group_id: String,
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

pub struct GraphLayout {
    pub width: f64,
    pub height: f64,
    pub nodes: Vec<GraphNode>,
    /// SVG path data, one per edge.
    pub edges: Vec<String>,
    /// Parents before their children: the template draws them in this order.
    pub groups: Vec<GraphGroup>,
}

/// Lays out `dag`, colouring nodes with `states` (task id -> state string).
pub fn layout(dag: &Dag, states: &HashMap<String, String>) -> GraphLayout {
    let tree = GroupTree::new(dag);
    let graph = SlotGraph::new(dag, &tree);
    let mut layers = graph.layers();
    let order = order_layers(&mut layers, &graph, &tree);
    let stacked = stack(&graph, &tree, &layers, &order);
    let spans = &graph.spans;
    let levels = box_levels(&tree, spans);
    let cols = Columns::new(dag, &graph, &layers, &levels);

    // Left x, centre y and width of every slot, for nodes and edges.
    let at: Vec<(f64, f64, f64)> = (0..graph.layer.len())
        .map(|s| {
            let l = graph.layer[s];
            let top = stacked.slot_top[s];
            if s < graph.tasks {
                (cols.x[l], top + NODE_H / 2.0, task_width(dag, s))
            } else {
                (cols.x[l] + cols.w[l] / 2.0, top + NODE_H / 2.0, 0.0)
            }
        })
        .collect();
    let nodes = dag
        .tasks
        .iter()
        .zip(&at)
        .map(|(t, &(x, y, w))| GraphNode {
            task_id: t.task_id.to_string(),
            x,
            y: y - NODE_H / 2.0,
            w,
            h: NODE_H,
            state: states
                .get(t.task_id.as_str())
                .cloned()
                .unwrap_or_else(|| "none".to_owned()),
        })
        .collect();
    let edges = graph
        .edges
        .iter()
        .filter_map(|chain| edge_path(chain, &at, graph.tasks))
        .collect();
    let groups = tree
        .outermost_first()
        .into_iter()
        .filter_map(|g| {
            let (lo, hi) = spans[g]?;
            let side = GROUP_SIDE * levels[g] as f64;
            let x = cols.x[lo] - side;
            Some(GraphGroup {
                group_id: dag.task_groups[g].group_id.clone(),
                x,
                y: stacked.group_top[g],
                w: cols.x[hi] + cols.w[hi] + side - x,
                h: stacked.group_h[g],
            })
        })
        .collect();
    GraphLayout {
        width: cols.width,
        height: stacked.height,
        nodes,
        edges,
        groups,
    }
}

fn text_width(text: &str) -> f64 {
    text.chars().count() as f64 * CHAR_W
}

fn task_width(dag: &Dag, i: usize) -> f64 {
    (text_width(dag.tasks[i].task_id.as_str()) + 24.0).max(60.0)
}

/// The task groups as a tree, numbered as in `dag.task_groups`.
struct GroupTree {
    /// The enclosing group; None at the top level.
    parent: Vec<Option<usize>>,
    /// The groups around each group, outermost first, ending with the group itself.
    chain: Vec<Vec<usize>>,
    /// Each task's own (innermost) group.
    of_task: Vec<Option<usize>>,
}

impl GroupTree {
    fn new(dag: &Dag) -> GroupTree {
        let mut by_id: HashMap<&str, usize> = HashMap::new();
        for (g, group) in dag.task_groups.iter().enumerate() {
            by_id.entry(group.group_id.as_str()).or_insert(g);
        }
        let mut parent: Vec<Option<usize>> = dag
            .task_groups
            .iter()
            .map(|g| g.parent.as_deref().and_then(|p| by_id.get(p).copied()))
            .collect();
        cut_parent_loops(&mut parent);
        let chain = (0..parent.len())
            .map(|g| {
                let mut chain = vec![g];
                let mut cur = parent[g];
                while let Some(p) = cur {
                    chain.push(p);
                    cur = parent[p];
                }
                chain.reverse();
                chain
            })
            .collect();
        // Membership comes from the task's group, not its id: with `prefix_group_id: false`
        // a task's id does not start with its group's.
        let of_task = dag
            .tasks
            .iter()
            .map(|t| t.group_id.as_deref().and_then(|g| by_id.get(g).copied()))
            .collect();
        GroupTree {
            parent,
            chain,
            of_task,
        }
    }

    fn len(&self) -> usize {
        self.parent.len()
    }

    /// The groups around `g`, outermost first; empty outside every group.
    fn chain_of(&self, g: Option<usize>) -> &[usize] {
        match g {
            Some(g) => &self.chain[g],
            None => &[],
        }
    }

    /// The innermost group holding both `a` and `b`.
    fn common(&self, a: Option<usize>, b: Option<usize>) -> Option<usize> {
        self.chain_of(a)
            .iter()
            .zip(self.chain_of(b))
            .take_while(|(x, y)| x == y)
            .last()
            .map(|(x, _)| *x)
    }

    /// Every group, each after its parent (the DAG's order among equals).
    fn outermost_first(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|&g| self.chain[g].len());
        order
    }
}

/// The loader rejects parent loops; any left here are cut so that walking up always ends.
fn cut_parent_loops(parent: &mut [Option<usize>]) {
    for g in 0..parent.len() {
        let mut cur = parent[g];
        let mut hops = 0;
        while let Some(p) = cur {
            if p == g || hops > parent.len() {
                parent[g] = None;
                break;
            }
            hops += 1;
            cur = parent[p];
        }
    }
}

/// Tasks and via points ("slots"), tasks first (numbered as in `dag.tasks`).
struct SlotGraph {
    tasks: usize,
    layer: Vec<usize>,
    depth: usize,
    /// The innermost group a slot is drawn in: a task's own group; for a via point, see
    /// `via_owner`.
    owner: Vec<Option<usize>>,
    /// The first and last layer of each group's tasks (nested groups' included); None when
    /// the group has none.
    spans: Vec<Option<(usize, usize)>>,
    /// Neighbours in the previous and the next layer.
    up: Vec<Vec<usize>>,
    down: Vec<Vec<usize>>,
    /// Each edge as the slots it passes through, source first.
    edges: Vec<Vec<usize>>,
}

impl SlotGraph {
    fn new(dag: &Dag, tree: &GroupTree) -> SlotGraph {
        let index: HashMap<&str, usize> = dag
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.task_id.as_str(), i))
            .collect();
        // Longest-path layers.
        let mut layer = vec![0usize; dag.tasks.len()];
        for (i, t) in dag.tasks.iter().enumerate() {
            layer[i] = t
                .upstream
                .iter()
                .filter_map(|u| index.get(u.as_str()))
                .map(|&u| layer[u] + 1)
                .max()
                .unwrap_or(0);
        }
        let depth = layer.iter().copied().max().map_or(0, |m| m + 1);
        let tasks = layer.len();
        let spans = group_spans(&layer, tree);
        let mut owner = tree.of_task.clone();
        let mut edges = Vec::new();
        for (i, t) in dag.tasks.iter().enumerate() {
            for d in &t.downstream {
                let Some(&j) = index.get(d.as_str()) else {
                    continue;
                };
                let mut chain = vec![i];
                for l in layer[i] + 1..layer[j] {
                    chain.push(layer.len());
                    layer.push(l);
                    owner.push(via_owner(tree, &spans, owner[i], owner[j], l));
                }
                chain.push(j);
                edges.push(chain);
            }
        }
        let mut up = vec![Vec::new(); layer.len()];
        let mut down = vec![Vec::new(); layer.len()];
        for chain in &edges {
            for pair in chain.windows(2) {
                down[pair[0]].push(pair[1]);
                up[pair[1]].push(pair[0]);
            }
        }
        SlotGraph {
            tasks,
            layer,
            depth,
            owner,
            spans,
            up,
            down,
            edges,
        }
    }

    /// The slots of each layer: tasks in topological order, then via points.
    fn layers(&self) -> Vec<Vec<usize>> {
        let mut layers = vec![Vec::new(); self.depth];
        for (s, &l) in self.layer.iter().enumerate() {
            layers[l].push(s);
        }
        layers
    }
}

/// The first and last layer of each group's tasks (nested groups' included); None when empty.
fn group_spans(task_layer: &[usize], tree: &GroupTree) -> Vec<Option<(usize, usize)>> {
    let mut spans: Vec<Option<(usize, usize)>> = vec![None; tree.len()];
    for (&l, &group) in task_layer.iter().zip(&tree.of_task) {
        for &g in tree.chain_of(group) {
            spans[g] = Some(spans[g].map_or((l, l), |(lo, hi)| (lo.min(l), hi.max(l))));
        }
    }
    spans
}

/// The group the via point in layer `l` of an edge from a task in group `from` to one in
/// `to` is drawn in: the source's innermost group that reaches that far right, else the
/// target's innermost group that starts that far left, else the innermost group holding both
/// ends. So an edge leaves and enters its groups' boxes through their sides, and never runs
/// through the box of a group holding neither of its ends.
fn via_owner(
    tree: &GroupTree,
    spans: &[Option<(usize, usize)>],
    from: Option<usize>,
    to: Option<usize>,
    l: usize,
) -> Option<usize> {
    let common = tree.common(from, to);
    let shared = tree.chain_of(common).len();
    let only_from = tree.chain_of(from).get(shared..).unwrap_or_default();
    let only_to = tree.chain_of(to).get(shared..).unwrap_or_default();
    let source_side = only_from
        .iter()
        .rev()
        .find(|&&g| spans[g].is_some_and(|(_, hi)| hi >= l));
    let target_side = only_to
        .iter()
        .rev()
        .find(|&&g| spans[g].is_some_and(|(lo, _)| lo <= l));
    source_side.or(target_side).copied().or(common)
}

/// The keys the layers were last sorted by: the skyline visits blocks in this order.
struct Order {
    slot_key: Vec<Key>,
    /// One key per group, shared by all the layers it spans.
    group_key: Vec<f64>,
}

/// A sort key: a position, then a tie-breaker (a group's number, or `groups + index` for a
/// slot) so that no two units of a layer compare equal.
type Key = (f64, usize);

fn cmp_key(a: Key, b: Key) -> Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// Orders every layer (barycenter sweeps that keep groups together), and returns where things
/// ended up.
fn order_layers(layers: &mut [Vec<usize>], graph: &SlotGraph, tree: &GroupTree) -> Order {
    let mut count = vec![0.0; tree.len()];
    for s in 0..graph.layer.len() {
        for &g in tree.chain_of(graph.owner[s]) {
            count[g] += 1.0;
        }
    }
    let mut o = Orderer {
        graph,
        tree,
        pos: vec![0.0; graph.layer.len()],
        sum: vec![0.0; tree.len()],
        count,
        slot_key: vec![(0.0, 0); graph.layer.len()],
    };
    for layer in layers.iter() {
        o.centre(layer);
    }
    o.cluster(layers);
    let depth = layers.len();
    let mut changed = false;
    for sweep in 0..SWEEPS {
        let downward = sweep % 2 == 0;
        let order: Vec<usize> = if downward {
            (1..depth).collect()
        } else {
            (0..depth.saturating_sub(1)).rev().collect()
        };
        for l in order {
            changed |= o.sweep_layer(&mut layers[l], downward);
        }
        // A down and up sweep that moved nothing leave everything as it was: more would too.
        if !downward && !std::mem::take(&mut changed) {
            break;
        }
    }
    // Sweeps update group keys layer by layer; one last pass with fixed keys puts groups in
    // the same order in every layer, which the skyline relies on.
    let group_key = o.cluster(layers);
    Order {
        slot_key: o.slot_key,
        group_key,
    }
}

struct Orderer<'a> {
    graph: &'a SlotGraph,
    tree: &'a GroupTree,
    /// Each slot's position in its layer, centred on 0 so that layers of different lengths
    /// line up.
    pos: Vec<f64>,
    /// Sum and number of `pos` over each group's slots (nested groups' included): a group's
    /// key is their mean, kept up to date as slots move.
    sum: Vec<f64>,
    count: Vec<f64>,
    /// The key each slot was last sorted by.
    slot_key: Vec<Key>,
}

impl Orderer<'_> {
    fn set(&mut self, s: usize, p: f64) {
        let delta = p - self.pos[s];
        self.pos[s] = p;
        for &g in self.tree.chain_of(self.graph.owner[s]) {
            self.sum[g] += delta;
        }
    }

    fn centre(&mut self, layer: &[usize]) {
        let mid = (layer.len() as f64 - 1.0) / 2.0;
        for (p, &s) in layer.iter().enumerate() {
            self.set(s, p as f64 - mid);
        }
    }

    fn group_keys(&self) -> Vec<f64> {
        self.sum
            .iter()
            .zip(&self.count)
            .map(|(&s, &c)| if c > 0.0 { s / c } else { 0.0 })
            .collect()
    }

    /// Moves each slot of a layer to the mean position of its neighbours in the layer before
    /// (or after), then sorts the layer. Whether that changed the layer's order.
    fn sweep_layer(&mut self, layer: &mut Vec<usize>, downward: bool) -> bool {
        let graph = self.graph;
        let neighbours = if downward { &graph.up } else { &graph.down };
        for &s in layer.iter() {
            let ns = &neighbours[s];
            if !ns.is_empty() {
                let mean = ns.iter().map(|&n| self.pos[n]).sum::<f64>() / ns.len() as f64;
                self.set(s, mean);
            }
        }
        let before = layer.clone();
        let keys = self.group_keys();
        self.sort(layer, &keys);
        *layer != before
    }

    /// Sorts every layer by position, with the same group keys for all of them.
    fn cluster(&mut self, layers: &mut [Vec<usize>]) -> Vec<f64> {
        let keys = self.group_keys();
        for layer in layers {
            self.sort(layer, &keys);
        }
        keys
    }

    /// Sorts a layer by position while keeping each group's slots together: slots compare by
    /// the keys of their groups, outermost first, then by their own position. Positions are
    /// then re-centred.
    fn sort(&mut self, layer: &mut Vec<usize>, group_key: &[f64]) {
        let groups = group_key.len();
        let mut items: Vec<(&[usize], Key, usize)> = Vec::with_capacity(layer.len());
        for (p, &s) in layer.iter().enumerate() {
            let own = (self.pos[s], groups + p);
            self.slot_key[s] = own;
            items.push((self.tree.chain_of(self.graph.owner[s]), own, s));
        }
        // Keys are unique (the tie-breakers), so an unstable sort gives the same order.
        let order = |a: &(&[usize], Key, usize), b: &(&[usize], Key, usize)| {
            // Past the groups both are in, the first that differs decides; a slot's own key
            // stands at the level where its chain ends. (A plain loop: this runs n log n
            // times per layer and sweep, and iterator adapters are slow in debug builds.)
            let mut k = 0;
            loop {
                let x = if k < a.0.len() {
                    (group_key[a.0[k]], a.0[k])
                } else {
                    a.1
                };
                let y = if k < b.0.len() {
                    (group_key[b.0[k]], b.0[k])
                } else {
                    b.1
                };
                let o = cmp_key(x, y);
                if o.is_ne() || k >= a.0.len() || k >= b.0.len() {
                    return o;
                }
                k += 1;
            }
        };
        // Most layers are already in order once the sweeps settle: checking is cheaper.
        if !items.is_sorted_by(|a, b| order(a, b).is_le()) {
            items.sort_unstable_by(order);
        }
        layer.clear();
        layer.extend(items.into_iter().map(|(_, _, s)| s));
        self.centre(layer);
    }
}

/// Vertical placement: the top of every slot and group box, and the drawing's height.
struct Stacked {
    slot_top: Vec<f64>,
    group_top: Vec<f64>,
    group_h: Vec<f64>,
    height: f64,
}

/// A thing stacked in a group (or at the top level): a slot, or a whole child group.
#[derive(Clone, Copy)]
enum Unit {
    Slot(usize),
    /// A group and the first and last layer it spans.
    Group(usize, usize, usize),
}

/// A rectangle over layers `lo..=hi` to be stacked.
struct Block {
    lo: usize,
    hi: usize,
    h: f64,
    key: Key,
    /// Where its top would go if nothing were in the way.
    want: f64,
}

/// Stacks every group's contents, innermost groups first so that a group's height is known
/// when its parent stacks it, then the top level; then turns the tops, relative to the
/// enclosing box, into absolute ones.
fn stack(graph: &SlotGraph, tree: &GroupTree, layers: &[Vec<usize>], order: &Order) -> Stacked {
    let groups = tree.len();
    let runs = Runs::new(layers, graph, tree);
    let mut index = vec![0usize; graph.layer.len()];
    for layer in layers {
        for (i, &s) in layer.iter().enumerate() {
            index[s] = i;
        }
    }
    // What each group holds directly (index `groups`: the top level).
    let mut held: Vec<Vec<Unit>> = vec![Vec::new(); groups + 1];
    for (s, owner) in graph.owner.iter().enumerate() {
        held[owner.unwrap_or(groups)].push(Unit::Slot(s));
    }
    for (g, span) in graph.spans.iter().enumerate() {
        if let Some((lo, hi)) = *span {
            held[tree.parent[g].unwrap_or(groups)].push(Unit::Group(g, lo, hi));
        }
    }
    let mut slot_top = vec![0.0; graph.layer.len()];
    let mut group_top = vec![0.0; groups];
    let mut group_h = vec![0.0; groups];
    // How far below its box's top each group's centre line (the centre of its runs) ended up.
    let mut origin = vec![0.0; groups];
    let mut height = 2.0 * PAD;
    let mut innermost_first: Vec<usize> = tree.outermost_first();
    innermost_first.reverse();
    let containers = innermost_first
        .into_iter()
        .filter(|&g| graph.spans[g].is_some())
        .map(Some)
        .chain([None]);
    for container in containers {
        let c = container.unwrap_or(groups);
        let units = &held[c];
        // Wanted tops are relative to the container's centre line: each layer of a group is
        // centred within the group, as the top level's layers are within the drawing.
        let blocks: Vec<Block> = units
            .iter()
            .map(|&u| match u {
                Unit::Slot(s) => {
                    let l = graph.layer[s];
                    Block {
                        lo: l,
                        hi: l,
                        h: NODE_H,
                        key: order.slot_key[s],
                        want: (index[s] as f64 - runs.centre(c, l)) * ROW - NODE_H / 2.0,
                    }
                }
                Unit::Group(g, lo, hi) => Block {
                    lo,
                    hi,
                    h: group_h[g],
                    key: (order.group_key[g], g),
                    want: runs.offset(g, c) * ROW - origin[g],
                },
            })
            .collect();
        let tops = skyline(&blocks);
        let (first, last) = extent(&blocks, &tops);
        let offset = if container.is_some() { GROUP_TOP } else { PAD } - first;
        for (&u, t) in units.iter().zip(&tops) {
            match u {
                Unit::Slot(s) => slot_top[s] = t + offset,
                Unit::Group(g, ..) => group_top[g] = t + offset,
            }
        }
        match container {
            Some(g) => {
                group_h[g] = GROUP_TOP + (last - first) + GROUP_BOTTOM;
                origin[g] = offset;
            }
            None => height += last - first,
        }
    }
    // Relative to absolute, outer groups first.
    for g in tree.outermost_first() {
        if graph.spans[g].is_some() {
            group_top[g] += tree.parent[g].map_or(0.0, |p| group_top[p]);
        }
    }
    for (s, owner) in graph.owner.iter().enumerate() {
        slot_top[s] += owner.map_or(0.0, |g| group_top[g]);
    }
    Stacked {
        slot_top,
        group_top,
        group_h,
        height,
    }
}

/// Where each group's slots (nested groups' included) lie in each ordered layer: one run of
/// neighbours, as its first index and length per layer. Index `groups`: the top level.
struct Runs(Vec<BTreeMap<usize, (usize, usize)>>);

impl Runs {
    fn new(layers: &[Vec<usize>], graph: &SlotGraph, tree: &GroupTree) -> Runs {
        let top = tree.len();
        let mut runs = vec![BTreeMap::new(); top + 1];
        for (l, layer) in layers.iter().enumerate() {
            for (i, &s) in layer.iter().enumerate() {
                for &c in tree.chain_of(graph.owner[s]).iter().chain([&top]) {
                    runs[c].entry(l).or_insert((i, 0)).1 += 1;
                }
            }
        }
        Runs(runs)
    }

    /// The index of the middle of `c`'s run in layer `l`.
    fn centre(&self, c: usize, l: usize) -> f64 {
        self.0[c]
            .get(&l)
            .map_or(0.0, |&(first, len)| first as f64 + (len as f64 - 1.0) / 2.0)
    }

    /// How many rows the middle of group `g`'s runs lies below that of its container `c`'s,
    /// on average over `g`'s slots.
    fn offset(&self, g: usize, c: usize) -> f64 {
        let (mut sum, mut slots) = (0.0, 0.0);
        for (&l, &(_, len)) in &self.0[g] {
            sum += len as f64 * (self.centre(g, l) - self.centre(c, l));
            slots += len as f64;
        }
        if slots > 0.0 { sum / slots } else { 0.0 }
    }
}

/// The skyline: places blocks in key order (which is their order in every layer), each at
/// its wanted top or, if that is taken, just below the lowest block already placed in the
/// layers it spans, so that no two blocks overlap.
fn skyline(blocks: &[Block]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_by(|&a, &b| cmp_key(blocks[a].key, blocks[b].key));
    // Where the free space starts in each layer the blocks cover.
    let first = blocks.iter().map(|b| b.lo).min().unwrap_or(0);
    let last = blocks.iter().map(|b| b.hi).max().unwrap_or(0);
    let mut free = vec![f64::NEG_INFINITY; last + 1 - first];
    let mut tops = vec![0.0; blocks.len()];
    for i in order {
        let b = &blocks[i];
        let span = &mut free[b.lo - first..=b.hi - first];
        let top = span.iter().copied().fold(b.want, f64::max);
        span.fill(top + b.h + ROW_GAP);
        tops[i] = top;
    }
    tops
}

/// The highest top and the lowest bottom of the blocks; zeros when there are none.
fn extent(blocks: &[Block], tops: &[f64]) -> (f64, f64) {
    let Some(first) = tops.iter().copied().reduce(f64::min) else {
        return (0.0, 0.0);
    };
    let last = blocks
        .iter()
        .zip(tops)
        .map(|(b, t)| t + b.h)
        .fold(first, f64::max);
    (first, last)
}

/// How many levels of boxes each group's box holds (itself included): its side margin.
fn box_levels(tree: &GroupTree, spans: &[Option<(usize, usize)>]) -> Vec<usize> {
    let mut levels = vec![0usize; tree.len()];
    let mut innermost_first = tree.outermost_first();
    innermost_first.reverse();
    for g in innermost_first {
        if spans[g].is_none() {
            continue;
        }
        levels[g] = levels[g].max(1);
        if let Some(p) = tree.parent[g] {
            levels[p] = levels[p].max(levels[g] + 1);
        }
    }
    levels
}

/// The layers' columns.
struct Columns {
    x: Vec<f64>,
    w: Vec<f64>,
    /// The drawing's width.
    width: f64,
}

impl Columns {
    fn new(dag: &Dag, graph: &SlotGraph, layers: &[Vec<usize>], levels: &[usize]) -> Columns {
        let mut w: Vec<f64> = layers
            .iter()
            .map(|slots| {
                slots
                    .iter()
                    .filter(|&&s| s < graph.tasks)
                    .map(|&s| task_width(dag, s))
                    .fold(10.0_f64, f64::max)
            })
            .collect();
        // Boxes reach into the gaps between columns; two of them, from the two sides of a
        // gap, must still leave room between them.
        let outer_side = levels.iter().copied().max().unwrap_or(0) as f64 * GROUP_SIDE;
        let gap = COL_GAP.max(2.0 * outer_side + BOX_GAP);
        // A box must be wide enough for its label: widen its last column if not.
        for (g, span) in graph.spans.iter().enumerate() {
            let Some((lo, hi)) = *span else { continue };
            let label = text_width(&dag.task_groups[g].group_id) + 12.0;
            let side = levels[g] as f64 * GROUP_SIDE;
            let have = w[lo..=hi].iter().sum::<f64>() + gap * (hi - lo) as f64 + 2.0 * side;
            if label > have {
                w[hi] += label - have;
            }
        }
        let mut x = Vec::with_capacity(w.len());
        let mut next = PAD + outer_side;
        for cw in &w {
            x.push(next);
            next += cw + gap;
        }
        let width = match (x.last(), w.last()) {
            (Some(x), Some(w)) => x + w + outer_side + PAD,
            _ => 2.0 * PAD,
        };
        Columns { x, w, width }
    }
}

/// A smooth path from the source's right side through every via point to the target's left.
fn edge_path(chain: &[usize], at: &[(f64, f64, f64)], tasks: usize) -> Option<String> {
    let mut points = Vec::with_capacity(chain.len() * 2);
    for (k, &s) in chain.iter().enumerate() {
        let (left, y, w) = *at.get(s)?;
        let x = if k == 0 { left + w } else { left };
        points.push((x, y));
        if s >= tasks {
            points.push((left, y)); // enter and leave a via point horizontally
        }
    }
    let &(x0, y0) = points.first()?;
    let mut d = String::with_capacity(points.len() * 40);
    d.push('M');
    push_point(&mut d, x0, y0);
    for pair in points.windows(2) {
        let ((ax, ay), (bx, by)) = (pair[0], pair[1]);
        let mid = (ax + bx) / 2.0;
        d.push_str(" C");
        push_point(&mut d, mid, ay);
        d.push(' ');
        push_point(&mut d, mid, by);
        d.push(' ');
        push_point(&mut d, bx, by);
    }
    Some(d)
}

/// `x,y` with one decimal each. Written from whole tenths: a big DAG's paths have tens of
/// thousands of numbers, and float formatting is slow.
fn push_point(out: &mut String, x: f64, y: f64) {
    push_tenths(out, x);
    out.push(',');
    push_tenths(out, y);
}

fn push_tenths(out: &mut String, v: f64) {
    let tenths = (v * 10.0).round() as i64;
    let sign = if tenths < 0 { "-" } else { "" };
    let t = tenths.unsigned_abs();
    let _ = write!(out, "{sign}{}.{}", t / 10, t % 10);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

    fn dag(yaml: &str) -> Dag {
        // One file per call: tests run in parallel and their YAML may be the same length.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("flow-graph-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "g{}.yaml",
            NEXT.fetch_add(1, AtomicOrdering::Relaxed)
        ));
        std::fs::write(&path, yaml).unwrap();
        let file = flow_dag::load_file(&path, &dir, &flow_dag::LoadOptions::default());
        assert!(!file.has_errors(), "{:?}", file.diagnostics);
        file.dags.into_iter().next().unwrap()
    }

    fn node<'a>(g: &'a GraphLayout, id: &str) -> &'a GraphNode {
        g.nodes.iter().find(|n| n.task_id == id).unwrap()
    }

    fn group<'a>(g: &'a GraphLayout, id: &str) -> &'a GraphGroup {
        g.groups.iter().find(|b| b.group_id == id).unwrap()
    }

    /// `inner` is `outer` or nested in it, following the DAG's `parent` links.
    fn within(d: &Dag, inner: &str, outer: &str) -> bool {
        let mut cur = Some(inner.to_owned());
        let mut hops = 0;
        while let Some(g) = cur {
            if g == outer {
                return true;
            }
            hops += 1;
            assert!(hops <= d.task_groups.len(), "group loop at {g}");
            cur = d
                .task_groups
                .iter()
                .find(|x| x.group_id == g)
                .and_then(|x| x.parent.clone());
        }
        false
    }

    fn is_member(d: &Dag, task_id: &str, group_id: &str) -> bool {
        d.task(task_id)
            .and_then(|t| t.group_id.as_deref())
            .is_some_and(|g| within(d, g, group_id))
    }

    struct Rect {
        x: f64,
        y: f64,
        w: f64,
        h: f64,
    }

    fn rect_of_node(n: &GraphNode) -> Rect {
        Rect {
            x: n.x,
            y: n.y,
            w: n.w,
            h: n.h,
        }
    }

    fn rect_of_group(b: &GraphGroup) -> Rect {
        Rect {
            x: b.x,
            y: b.y,
            w: b.w,
            h: b.h,
        }
    }

    /// At least `gap` apart horizontally or vertically.
    fn apart(a: &Rect, b: &Rect, gap: f64) -> bool {
        a.x + a.w + gap <= b.x
            || b.x + b.w + gap <= a.x
            || a.y + a.h + gap <= b.y
            || b.y + b.h + gap <= a.y
    }

    /// `inner` lies inside `outer`, `side` from its left, right and bottom and `top` below its
    /// top edge (where the group's label is).
    fn inside(inner: &Rect, outer: &Rect, side: f64, top: f64) -> bool {
        inner.x >= outer.x + side
            && inner.x + inner.w <= outer.x + outer.w - side
            && inner.y >= outer.y + top
            && inner.y + inner.h <= outer.y + outer.h - side
    }

    fn contains_point(r: &Rect, (x, y): (f64, f64)) -> bool {
        x >= r.x && x <= r.x + r.w && y >= r.y && y <= r.y + r.h
    }

    /// The start point and each curve's end point of an edge path (`M x,y C .. .. x,y ...`).
    fn path_points(d: &str) -> Vec<(f64, f64)> {
        let pairs: Vec<(f64, f64)> = d
            .split(' ')
            .map(|tok| {
                let (x, y) = tok.trim_start_matches(['M', 'C']).split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        std::iter::once(pairs[0])
            .chain(pairs[1..].chunks(3).map(|c| c[2]))
            .collect()
    }

    fn near(a: (f64, f64), b: (f64, f64)) -> bool {
        (a.0 - b.0).abs() < 0.06 && (a.1 - b.1).abs() < 0.06
    }

    /// Every property the Graph tab relies on; panics naming the first one broken.
    fn check(d: &Dag, g: &GraphLayout) {
        assert_eq!(g.nodes.len(), d.tasks.len());
        // Nodes never overlap and stay on the canvas.
        for (i, a) in g.nodes.iter().enumerate() {
            let ra = rect_of_node(a);
            assert!(a.x >= 0.0 && a.y >= 0.0, "{} off the canvas", a.task_id);
            assert!(a.x + a.w <= g.width && a.y + a.h <= g.height);
            for b in &g.nodes[i + 1..] {
                let rb = rect_of_node(b);
                assert!(apart(&ra, &rb, 0.0), "{} overlaps {}", a.task_id, b.task_id);
            }
        }
        // Layers are columns, left to right along every edge.
        let mut layer: HashMap<&str, usize> = HashMap::new();
        for t in &d.tasks {
            let l = t
                .upstream
                .iter()
                .map(|u| layer[u.as_str()] + 1)
                .max()
                .unwrap_or(0);
            layer.insert(t.task_id.as_str(), l);
        }
        for a in &g.nodes {
            for b in &g.nodes {
                let (la, lb) = (layer[a.task_id.as_str()], layer[b.task_id.as_str()]);
                if la == lb {
                    assert_eq!(a.x, b.x, "{} and {} share a layer", a.task_id, b.task_id);
                } else if la < lb {
                    assert!(a.x + a.w < b.x, "{} not left of {}", a.task_id, b.task_id);
                }
            }
        }
        // Boxes: one per group with members, parents first, nested or apart.
        let with_members: Vec<&str> = d
            .task_groups
            .iter()
            .map(|x| x.group_id.as_str())
            .filter(|gid| {
                d.tasks
                    .iter()
                    .any(|t| is_member(d, t.task_id.as_str(), gid))
            })
            .collect();
        let mut drawn: Vec<&str> = g.groups.iter().map(|b| b.group_id.as_str()).collect();
        drawn.sort_unstable();
        let mut expected = with_members.clone();
        expected.sort_unstable();
        assert_eq!(drawn, expected, "a box for each group with members");
        for (i, a) in g.groups.iter().enumerate() {
            let ra = rect_of_group(a);
            assert!(a.x >= 0.0 && a.y >= 0.0, "{} off the canvas", a.group_id);
            assert!(a.x + a.w <= g.width && a.y + a.h <= g.height);
            let label = a.group_id.chars().count() as f64 * CHAR_W + 12.0;
            assert!(a.w >= label, "{}'s label sticks out of its box", a.group_id);
            for b in &g.groups[i + 1..] {
                let rb = rect_of_group(b);
                assert!(
                    !within(d, &a.group_id, &b.group_id),
                    "{} drawn before its parent {}",
                    a.group_id,
                    b.group_id
                );
                if within(d, &b.group_id, &a.group_id) {
                    assert!(
                        inside(&rb, &ra, 4.0, 16.0),
                        "{} not inside {}",
                        b.group_id,
                        a.group_id
                    );
                } else {
                    assert!(
                        apart(&ra, &rb, 4.0),
                        "{} overlaps {}",
                        a.group_id,
                        b.group_id
                    );
                }
            }
            for n in &g.nodes {
                let rn = rect_of_node(n);
                if is_member(d, &n.task_id, &a.group_id) {
                    assert!(
                        inside(&rn, &ra, 4.0, 16.0),
                        "{} not inside {}",
                        n.task_id,
                        a.group_id
                    );
                } else {
                    assert!(
                        apart(&rn, &ra, 2.0),
                        "{} overlaps {}",
                        n.task_id,
                        a.group_id
                    );
                }
            }
        }
        // Edges: one per dependency, left to right; via points only inside boxes of groups
        // holding one of the ends.
        let deps: usize = d.tasks.iter().map(|t| t.downstream.len()).sum();
        assert_eq!(g.edges.len(), deps);
        for e in &g.edges {
            let points = path_points(e);
            for pair in points.windows(2) {
                assert!(pair[1].0 >= pair[0].0 - 0.06, "edge goes back: {e}");
            }
            let (first, last) = (points[0], points[points.len() - 1]);
            let from = g
                .nodes
                .iter()
                .find(|n| near(first, (n.x + n.w, n.y + n.h / 2.0)))
                .unwrap();
            let to = g
                .nodes
                .iter()
                .find(|n| near(last, (n.x, n.y + n.h / 2.0)))
                .unwrap();
            assert!(
                d.task(&from.task_id)
                    .unwrap()
                    .downstream
                    .iter()
                    .any(|x| x.as_str() == to.task_id),
                "{e}"
            );
            for b in &g.groups {
                let owns = is_member(d, &from.task_id, &b.group_id)
                    || is_member(d, &to.task_id, &b.group_id);
                if owns {
                    continue;
                }
                for &p in &points[1..points.len() - 1] {
                    assert!(
                        !contains_point(&rect_of_group(b), p),
                        "edge {} -> {} passes through {} at {p:?}",
                        from.task_id,
                        to.task_id,
                        b.group_id
                    );
                }
            }
        }
    }

    #[test]
    fn layers_left_to_right_with_long_edges_routed_between_layers() {
        let d = dag(
            "d:\n  tasks:\n    a: {operator: empty}\n    b: {operator: empty, dependencies: [a]}\n    c: {operator: empty, dependencies: [b]}\n    z: {operator: empty, dependencies: [a, c]}\n",
        );
        let states = HashMap::from([("a".to_owned(), "success".to_owned())]);
        let g = layout(&d, &states);
        let x = |id: &str| node(&g, id).x;
        assert!(x("a") < x("b") && x("b") < x("c") && x("c") < x("z"));
        assert_eq!(g.edges.len(), 4);
        // a -> z crosses two layers: its path bends through two via points (3+ curves).
        let long = g
            .edges
            .iter()
            .map(|e| e.matches(" C").count())
            .max()
            .unwrap();
        assert!(long >= 3, "{:?}", g.edges);
        assert_eq!(g.nodes[0].state, "success");
        assert_eq!(g.nodes[1].state, "none");
        assert!(g.groups.is_empty());
        check(&d, &g);
    }

    #[test]
    fn barycenter_ordering_uncrosses_two_parallel_chains() {
        // Written in crossing order: a1->b2 and a2->b1 would cross if kept as declared.
        let d = dag(
            "d:\n  tasks:\n    a1: {operator: empty}\n    a2: {operator: empty}\n    b2: {operator: empty, dependencies: [a1]}\n    b1: {operator: empty, dependencies: [a2]}\n",
        );
        let g = layout(&d, &HashMap::new());
        let y = |id: &str| node(&g, id).y;
        assert_eq!(y("a1") < y("a2"), y("b2") < y("b1"), "edges cross");
        check(&d, &g);
    }

    #[test]
    fn barycenter_ordering_moves_whole_groups() {
        // The same crossing, with each second task in a group of two: the groups swap.
        let d = dag(
            "d:\n  task_groups:\n    p: {}\n    q: {}\n  tasks:\n    a1: {operator: empty}\n    a2: {operator: empty}\n    x: {operator: empty, task_group_name: p, dependencies: [a2]}\n    y: {operator: empty, task_group_name: p, dependencies: [a2]}\n    x2: {operator: empty, task_group_name: q, dependencies: [a1]}\n    y2: {operator: empty, task_group_name: q, dependencies: [a1]}\n",
        );
        let g = layout(&d, &HashMap::new());
        check(&d, &g);
        let y = |id: &str| node(&g, id).y;
        assert_eq!(y("a1") < y("a2"), y("q.x2") < y("p.x"), "edges cross");
    }

    #[test]
    fn groups_spanning_overlapping_layers_stay_apart() {
        // a spans layers 1-3, b sits in layer 2 between a's members, and ungrouped tasks fill
        // every layer; u0 -> u4 is a long edge across all of them.
        let d = dag("d:
  task_groups:
    a: {}
    b: {}
  tasks:
    u0: {operator: empty}
    x: {operator: empty, task_group_name: a, dependencies: [u0]}
    u1: {operator: empty, dependencies: [u0]}
    bx: {operator: empty, task_group_name: b, dependencies: [u1]}
    by: {operator: empty, task_group_name: b, dependencies: [x]}
    u2: {operator: empty, dependencies: [u1]}
    y: {operator: empty, task_group_name: a, dependencies: [by]}
    u3: {operator: empty, dependencies: [u2]}
    u4: {operator: empty, dependencies: [y, u3, u0]}
");
        let g = layout(&d, &HashMap::new());
        check(&d, &g);
        assert_eq!(g.groups.len(), 2);
        assert!(node(&g, "a.x").x < node(&g, "b.bx").x);
        assert!(node(&g, "b.bx").x < node(&g, "a.y").x);
    }

    #[test]
    fn nested_single_member_and_empty_groups() {
        let d = dag("d:
  task_groups:
    outer: {}
    inner: {parent_group_name: outer}
    deepest: {parent_group_name: inner}
    side: {}
    lonely: {}
    empty: {}
    empty_child: {parent_group_name: outer}
  tasks:
    start: {operator: empty}
    o1: {operator: empty, task_group_name: outer, dependencies: [start]}
    i1: {operator: empty, task_group_name: inner, dependencies: [o1]}
    i2: {operator: empty, task_group_name: inner, dependencies: [start]}
    d1: {operator: empty, task_group_name: deepest, dependencies: [i2]}
    s1: {operator: empty, task_group_name: side, dependencies: [start]}
    s2: {operator: empty, task_group_name: side, dependencies: [s1]}
    l1: {operator: empty, task_group_name: lonely, dependencies: [s1]}
    o2: {operator: empty, task_group_name: outer, dependencies: [i1, d1]}
    end: {operator: empty, dependencies: [o2, s2, l1, start]}
");
        let g = layout(&d, &HashMap::new());
        check(&d, &g);
        let ids: Vec<&str> = g.groups.iter().map(|b| b.group_id.as_str()).collect();
        for drawn in [
            "outer",
            "outer.inner",
            "outer.inner.deepest",
            "side",
            "lonely",
        ] {
            assert!(ids.contains(&drawn), "{drawn} missing from {ids:?}");
        }
        assert!(!ids.iter().any(|i| i.contains("empty")), "{ids:?}");
        // The label room: a child starts below its parent's label.
        let outer = group(&g, "outer");
        let inner = group(&g, "outer.inner");
        assert!(inner.y >= outer.y + 16.0);
        // A single member still gets a box around it.
        let lonely = group(&g, "lonely");
        let l1 = node(&g, "lonely.l1");
        assert!(inside(&rect_of_node(l1), &rect_of_group(lonely), 4.0, 16.0));
    }

    #[test]
    fn groups_without_an_id_prefix_still_hold_their_tasks() {
        // `prefix_group_id: false`: the tasks' ids do not start with the group's id.
        let d = dag("d:
  task_groups:
    bare: {prefix_group_id: false}
    kid: {parent_group_name: bare}
  tasks:
    s: {operator: empty}
    f: {operator: empty, task_group_name: bare, dependencies: [s]}
    h: {operator: empty, task_group_name: kid, dependencies: [s]}
    e: {operator: empty, dependencies: [f, h]}
");
        let g = layout(&d, &HashMap::new());
        check(&d, &g);
        let bare = group(&g, "bare");
        assert!(inside(
            &rect_of_node(node(&g, "f")),
            &rect_of_group(bare),
            4.0,
            16.0
        ));
    }

    #[test]
    fn a_dag_without_tasks_has_an_empty_drawing() {
        let d = Dag {
            tasks: Vec::new(),
            ..dag("d:\n  tasks:\n    a: {operator: empty}\n")
        };
        let g = layout(&d, &HashMap::new());
        assert!(g.nodes.is_empty() && g.edges.is_empty() && g.groups.is_empty());
        assert!(g.width > 0.0 && g.height > 0.0);
    }

    #[test]
    fn example_dags_lay_out_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut grouped = 0;
        for dir in ["dags", "crates/dag/tests/fixtures/good"] {
            let bag =
                flow_dag::load_dags(&root.join(dir), &flow_dag::LoadOptions::default()).unwrap();
            for d in bag.dags() {
                let started = std::time::Instant::now();
                let g = layout(d, &HashMap::new());
                let took = started.elapsed();
                check(d, &g);
                if !d.task_groups.is_empty() {
                    grouped += 1;
                    eprintln!(
                        "{dir}/{}: {} tasks, {} groups laid out in {took:?}",
                        d.dag_id,
                        d.tasks.len(),
                        d.task_groups.len()
                    );
                }
            }
        }
        // dags/factory/reports.yml and the loader's fixtures with (nested, unprefixed) groups.
        assert!(grouped >= 4, "only {grouped} DAGs with task groups");
    }

    /// `tasks` tasks in `groups` groups (the last fifth nested in the first ones). Each task
    /// runs after one or two recent tasks of its group; a group's first task, and every
    /// seventh task, also after a random task of an earlier group (groups form a tree), which
    /// makes long edges past other groups. `scatter` deals tasks to groups round-robin
    /// instead, so that every group spans almost every layer.
    fn generated_yaml(tasks: usize, groups: usize, scatter: bool) -> String {
        let mut seed: u64 = 42;
        let mut rand = |below: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % below.max(1)
        };
        let nested = groups / 5;
        let mut y = String::from("big:\n  task_groups:\n");
        for k in 0..groups {
            if k >= groups - nested {
                writeln!(
                    y,
                    "    g{k}: {{parent_group_name: g{}}}",
                    k - (groups - nested)
                )
                .unwrap();
            } else {
                writeln!(y, "    g{k}: {{}}").unwrap();
            }
        }
        y.push_str("  tasks:\n");
        let per = tasks / groups;
        let group_of = |i: usize| if scatter { i % groups } else { i / per };
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); groups];
        for i in 0..tasks {
            let k = group_of(i);
            let mut deps: Vec<usize> = Vec::new();
            let own = &members[k];
            if !own.is_empty() {
                deps.push(own[own.len() - 1 - rand(own.len().min(3))]);
                if rand(3) == 0 {
                    deps.push(own[own.len() - 1 - rand(own.len().min(6))]);
                }
            }
            // A group's first task hangs off a parent in a tree of groups.
            let anchor = if k >= groups - nested {
                k - (groups - nested)
            } else {
                k.saturating_sub(1) / 2
            };
            if (own.is_empty() || i % 7 == 0) && anchor < k && !members[anchor].is_empty() {
                let from = &members[anchor];
                deps.push(from[rand(from.len())]);
            }
            deps.sort_unstable();
            deps.dedup();
            let deps: Vec<String> = deps.iter().map(|d| format!("t{d}")).collect();
            writeln!(
                y,
                "    t{i}: {{operator: empty, task_group_name: g{k}, dependencies: [{}]}}",
                deps.join(", ")
            )
            .unwrap();
            members[k].push(i);
        }
        y
    }

    #[test]
    fn five_hundred_tasks_in_25_groups_lay_out_in_milliseconds() {
        for scatter in [false, true] {
            let d = dag(&generated_yaml(500, 25, scatter));
            assert_eq!(d.tasks.len(), 500);
            // Best of three: other tests run on the same cores meanwhile.
            let mut took = std::time::Duration::MAX;
            for _ in 0..3 {
                let started = std::time::Instant::now();
                std::hint::black_box(layout(&d, &HashMap::new()));
                took = took.min(started.elapsed());
            }
            let g = layout(&d, &HashMap::new());
            let shape = if scatter { "scattered" } else { "grouped" };
            eprintln!(
                "500 tasks in 25 groups ({shape}): {} edges, {} boxes, {:.0}x{:.0} px, laid out in {took:?}",
                g.edges.len(),
                g.groups.len(),
                g.width,
                g.height
            );
            check(&d, &g);
            assert_eq!(g.groups.len(), 25);
            let distinct: HashSet<u64> = g.nodes.iter().map(|n| n.x.to_bits()).collect();
            assert!(distinct.len() > 10, "{} layers", distinct.len());
            assert!(took.as_secs_f64() < 1.0, "{took:?}");
        }
    }
}
