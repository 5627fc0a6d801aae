//! The Graph tab's layout: a layered (Sugiyama-style) drawing of the DAG, left to right as in
//! Airflow, computed on the server so the page needs no layout library.
//!
//! 1. Layers: each task's longest path from a root (tasks come topologically ordered).
//! 2. Edges spanning several layers get a virtual point per layer in between, so they route
//!    around the nodes instead of through them.
//! 3. Order within layers: barycenter sweeps down and up, which removes most crossings.
//! 4. Coordinates: layers as columns as wide as their widest label; rows evenly spaced.
//!
//! The result is plain numbers and strings; the template draws the SVG (and escapes).

use std::collections::HashMap;

use flow_dag::Dag;

const NODE_H: f64 = 28.0;
const ROW_GAP: f64 = 14.0;
const COL_GAP: f64 = 70.0;
const CHAR_W: f64 = 7.2;
const PAD: f64 = 20.0;

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
    pub groups: Vec<GraphGroup>,
}

/// One slot in a layer: a task, or a point an edge passes through.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Task(usize),
    Via(usize),
}

/// Lays out `dag`, colouring nodes with `states` (task id -> state string).
pub fn layout(dag: &Dag, states: &HashMap<String, String>) -> GraphLayout {
    let n = dag.tasks.len();
    let index: HashMap<&str, usize> = dag
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.task_id.as_str(), i))
        .collect();
    // 1. Longest-path layers.
    let mut layer = vec![0usize; n];
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
    // 2. Edges as chains of slots through every layer they cross.
    let mut layers: Vec<Vec<Slot>> = vec![Vec::new(); depth];
    for (i, &l) in layer.iter().enumerate() {
        layers[l].push(Slot::Task(i));
    }
    let mut chains: Vec<Vec<Slot>> = Vec::new();
    let mut vias = 0usize;
    for (i, t) in dag.tasks.iter().enumerate() {
        for d in &t.downstream {
            let Some(&j) = index.get(d.as_str()) else {
                continue;
            };
            let mut chain = vec![Slot::Task(i)];
            for slots in &mut layers[layer[i] + 1..layer[j]] {
                let v = Slot::Via(vias);
                vias += 1;
                slots.push(v);
                chain.push(v);
            }
            chain.push(Slot::Task(j));
            chains.push(chain);
        }
    }
    // Neighbours of each slot in the previous and next layer.
    let mut up: HashMap<SlotKey, Vec<Slot>> = HashMap::new();
    let mut down: HashMap<SlotKey, Vec<Slot>> = HashMap::new();
    for chain in &chains {
        for pair in chain.windows(2) {
            down.entry(key(pair[0])).or_default().push(pair[1]);
            up.entry(key(pair[1])).or_default().push(pair[0]);
        }
    }
    // 3. Barycenter sweeps.
    for sweep in 0..8 {
        let downward = sweep % 2 == 0;
        let order: Vec<usize> = if downward {
            (1..depth).collect()
        } else {
            (0..depth.saturating_sub(1)).rev().collect()
        };
        for l in order {
            let reference = if downward { l - 1 } else { l + 1 };
            let pos: HashMap<SlotKey, usize> = layers[reference]
                .iter()
                .enumerate()
                .map(|(p, s)| (key(*s), p))
                .collect();
            let neighbours = if downward { &up } else { &down };
            let mut scored: Vec<(f64, usize, Slot)> = layers[l]
                .iter()
                .enumerate()
                .map(|(p, s)| {
                    let ps: Vec<usize> = neighbours
                        .get(&key(*s))
                        .map(|ns| {
                            ns.iter()
                                .filter_map(|x| pos.get(&key(*x)).copied())
                                .collect()
                        })
                        .unwrap_or_default();
                    let score = if ps.is_empty() {
                        p as f64
                    } else {
                        ps.iter().sum::<usize>() as f64 / ps.len() as f64
                    };
                    (score, p, *s)
                })
                .collect();
            scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            layers[l] = scored.into_iter().map(|(_, _, s)| s).collect();
        }
    }
    // 4. Coordinates.
    let width_of =
        |i: usize| (dag.tasks[i].task_id.as_str().len() as f64 * CHAR_W + 24.0).max(60.0);
    let mut col_x = Vec::with_capacity(depth);
    let mut col_w = Vec::with_capacity(depth);
    let mut x = PAD;
    for slots in &layers {
        let w = slots
            .iter()
            .map(|s| match s {
                Slot::Task(i) => width_of(*i),
                Slot::Via(_) => 10.0,
            })
            .fold(10.0_f64, f64::max);
        col_x.push(x);
        col_w.push(w);
        x += w + COL_GAP;
    }
    let tallest = layers.iter().map(Vec::len).max().unwrap_or(0);
    let height = PAD * 2.0 + tallest as f64 * (NODE_H + ROW_GAP);
    let mut at: HashMap<SlotKey, (f64, f64, f64)> = HashMap::new(); // left x, centre y, width
    for (l, slots) in layers.iter().enumerate() {
        // Centre short layers vertically.
        let offset = (tallest - slots.len()) as f64 * (NODE_H + ROW_GAP) / 2.0;
        for (p, s) in slots.iter().enumerate() {
            let y = PAD + offset + p as f64 * (NODE_H + ROW_GAP) + NODE_H / 2.0;
            let w = match s {
                Slot::Task(i) => width_of(*i),
                Slot::Via(_) => 0.0,
            };
            let left = match s {
                Slot::Task(_) => col_x[l],
                Slot::Via(_) => col_x[l] + col_w[l] / 2.0,
            };
            at.insert(key(*s), (left, y, w));
        }
    }
    let nodes: Vec<GraphNode> = dag
        .tasks
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let (x, y, w) = *at.get(&key(Slot::Task(i)))?;
            Some(GraphNode {
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
        })
        .collect();
    let edges = chains
        .iter()
        .filter_map(|chain| edge_path(chain, &at))
        .collect();
    let groups = group_boxes(dag, &nodes);
    GraphLayout {
        width: x - COL_GAP + PAD,
        height,
        nodes,
        edges,
        groups,
    }
}

type SlotKey = (bool, usize);

fn key(s: Slot) -> SlotKey {
    match s {
        Slot::Task(i) => (true, i),
        Slot::Via(i) => (false, i),
    }
}

/// A smooth path from the source's right side through every via point to the target's left.
fn edge_path(chain: &[Slot], at: &HashMap<SlotKey, (f64, f64, f64)>) -> Option<String> {
    let mut points = Vec::with_capacity(chain.len());
    for (k, s) in chain.iter().enumerate() {
        let (left, y, w) = *at.get(&key(*s))?;
        let x = if k == 0 { left + w } else { left };
        points.push((x, y));
        if matches!(s, Slot::Via(_)) {
            points.push((left, y)); // enter and leave a via point horizontally
        }
    }
    let (x0, y0) = points[0];
    let mut d = format!("M{x0:.1},{y0:.1}");
    for pair in points.windows(2) {
        let ((ax, ay), (bx, by)) = (pair[0], pair[1]);
        let mid = (ax + bx) / 2.0;
        d.push_str(&format!(
            " C{mid:.1},{ay:.1} {mid:.1},{by:.1} {bx:.1},{by:.1}"
        ));
    }
    Some(d)
}

/// A box around the members of each task group (ids `group.task`), drawn behind the nodes.
fn group_boxes(dag: &Dag, nodes: &[GraphNode]) -> Vec<GraphGroup> {
    let by_id: HashMap<&str, &GraphNode> = nodes.iter().map(|n| (n.task_id.as_str(), n)).collect();
    dag.task_groups
        .iter()
        .filter_map(|g| {
            let prefix = format!("{}.", g.group_id);
            let members: Vec<&&GraphNode> = by_id
                .iter()
                .filter(|(id, _)| id.starts_with(&prefix))
                .map(|(_, n)| n)
                .collect();
            if members.is_empty() {
                return None;
            }
            let x0 = members.iter().map(|n| n.x).fold(f64::MAX, f64::min) - 8.0;
            let y0 = members.iter().map(|n| n.y).fold(f64::MAX, f64::min) - 18.0;
            let x1 = members.iter().map(|n| n.x + n.w).fold(f64::MIN, f64::max) + 8.0;
            let y1 = members.iter().map(|n| n.y + n.h).fold(f64::MIN, f64::max) + 8.0;
            Some(GraphGroup {
                group_id: g.group_id.to_string(),
                x: x0,
                y: y0,
                w: x1 - x0,
                h: y1 - y0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dag(yaml: &str) -> Dag {
        let dir = std::env::temp_dir().join(format!("flow-graph-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("g{}.yaml", yaml.len()));
        std::fs::write(&path, yaml).unwrap();
        let file = flow_dag::load_file(&path, &dir, &flow_dag::LoadOptions::default());
        assert!(!file.has_errors(), "{:?}", file.diagnostics);
        file.dags.into_iter().next().unwrap()
    }

    #[test]
    fn layers_left_to_right_with_long_edges_routed_between_layers() {
        let d = dag(
            "d:\n  tasks:\n    a: {operator: empty}\n    b: {operator: empty, dependencies: [a]}\n    c: {operator: empty, dependencies: [b]}\n    z: {operator: empty, dependencies: [a, c]}\n",
        );
        let states = HashMap::from([("a".to_owned(), "success".to_owned())]);
        let g = layout(&d, &states);
        let x = |id: &str| g.nodes.iter().find(|n| n.task_id == id).unwrap().x;
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
        // Nodes never overlap.
        for a in &g.nodes {
            for b in &g.nodes {
                if a.task_id != b.task_id {
                    let apart = a.x + a.w <= b.x
                        || b.x + b.w <= a.x
                        || a.y + a.h <= b.y
                        || b.y + b.h <= a.y;
                    assert!(apart, "{} overlaps {}", a.task_id, b.task_id);
                }
            }
        }
    }

    #[test]
    fn barycenter_ordering_uncrosses_two_parallel_chains() {
        // Written in crossing order: a1->b2 and a2->b1 would cross if kept as declared.
        let d = dag(
            "d:\n  tasks:\n    a1: {operator: empty}\n    a2: {operator: empty}\n    b2: {operator: empty, dependencies: [a1]}\n    b1: {operator: empty, dependencies: [a2]}\n",
        );
        let g = layout(&d, &HashMap::new());
        let y = |id: &str| g.nodes.iter().find(|n| n.task_id == id).unwrap().y;
        assert_eq!(y("a1") < y("a2"), y("b2") < y("b1"), "edges cross");
    }
}
