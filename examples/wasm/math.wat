;; Exported functions with numeric params (abi "export").
;;
;;   artifact_spec: {"artifact_type": "wasm", "location": "examples/wasm/math.wat",
;;                   "config": {"abi": "export"}}
;;   invoke("add", [2, 3])        ->  5
;;   invoke("hypot", [3, 4])      ->  5.0
;;   invoke("fib", [50])          ->  12586269025
;;
;; Params are positional and converted to the export's types (i32/i64 integers,
;; f32/f64 numbers); the return value is the result.
(module
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1)))
  (func (export "hypot") (param f64 f64) (result f64)
    (f64.sqrt (f64.add (f64.mul (local.get 0) (local.get 0)) (f64.mul (local.get 1) (local.get 1)))))
  (func (export "fib") (param $n i32) (result i64) (local $a i64) (local $b i64) (local $t i64)
    (local.set $b (i64.const 1))
    (block $done
      (loop $step
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $t (i64.add (local.get $a) (local.get $b)))
        (local.set $a (local.get $b))
        (local.set $b (local.get $t))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $step)))
    (local.get $a)))
